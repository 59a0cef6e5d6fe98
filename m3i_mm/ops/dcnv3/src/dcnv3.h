// DCNv3 core, CUDA implementation: shared declarations.
//
// Layout (channels-last, as the PyTorch implementation in functional.py):
//   input  (N, H, W, G * Cg)
//   offset (N, Ho, Wo, G * P * 2), (x, y) pairs
//   mask   (N, Ho, Wo, G * P)
//   output (N, Ho, Wo, G * Cg)
// Kernel points are ordered x-major: p = i * kernel_h + j for kernel column i
// and row j, skipping the centre when remove_center is set.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace m3i_mm {

struct DCNv3Config {
  int kernel_h;
  int kernel_w;
  int stride_h;
  int stride_w;
  int pad_h;
  int pad_w;
  int dilation_h;
  int dilation_w;
  int group;
  int group_channels;
  double offset_scale;
  bool remove_center;
};

// The config from the extension's arguments, in their order.
inline DCNv3Config make_config(int64_t kernel_h, int64_t kernel_w,
                               int64_t stride_h, int64_t stride_w,
                               int64_t pad_h, int64_t pad_w,
                               int64_t dilation_h, int64_t dilation_w,
                               int64_t group, int64_t group_channels,
                               double offset_scale, bool remove_center) {
  return DCNv3Config{static_cast<int>(kernel_h),   static_cast<int>(kernel_w),
                     static_cast<int>(stride_h),   static_cast<int>(stride_w),
                     static_cast<int>(pad_h),      static_cast<int>(pad_w),
                     static_cast<int>(dilation_h), static_cast<int>(dilation_w),
                     static_cast<int>(group),      static_cast<int>(group_channels),
                     offset_scale,                 remove_center};
}

// Returns the output (N, Ho, Wo, G * Cg) in the input dtype. `simple` runs
// the one-thread-per-element kernel whatever the shape (the baseline).
at::Tensor dcnv3_cuda_forward(const at::Tensor& input,
                              const at::Tensor& offset,
                              const at::Tensor& mask,
                              const DCNv3Config& cfg, bool simple);

// Returns {grad_input, grad_offset, grad_mask}. `simple` runs the
// one-thread-per-point kernel whatever the shape (the baseline).
std::vector<at::Tensor> dcnv3_cuda_backward(const at::Tensor& input,
                                            const at::Tensor& offset,
                                            const at::Tensor& mask,
                                            const at::Tensor& grad_output,
                                            const DCNv3Config& cfg,
                                            bool simple);

}  // namespace m3i_mm
