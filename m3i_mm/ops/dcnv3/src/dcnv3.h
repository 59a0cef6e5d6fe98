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

// The shapes the kernels index by (the Python wrapper checks them first, with
// fuller messages): a mismatch would read and write out of bounds. Pass
// grad_output undefined for the forward.
inline void check_shapes(const at::Tensor& input, const at::Tensor& offset,
                         const at::Tensor& mask, const at::Tensor& grad_output,
                         const DCNv3Config& cfg) {
  TORCH_CHECK(cfg.group > 0 && cfg.group_channels > 0, "DCNv3: group (",
              cfg.group, ") and group_channels (", cfg.group_channels,
              ") must be positive");
  TORCH_CHECK(input.dim() == 4 && offset.dim() == 4 && mask.dim() == 4,
              "DCNv3: input, offset and mask must be 4-D, got ", input.sizes(),
              ", ", offset.sizes(), ", ", mask.sizes());
  const int64_t points =
      cfg.kernel_h * cfg.kernel_w - (cfg.remove_center ? 1 : 0);
  const int64_t out_h = (input.size(1) + 2 * cfg.pad_h -
                         (cfg.dilation_h * (cfg.kernel_h - 1) + 1)) /
                            cfg.stride_h + 1;
  const int64_t out_w = (input.size(2) + 2 * cfg.pad_w -
                         (cfg.dilation_w * (cfg.kernel_w - 1) + 1)) /
                            cfg.stride_w + 1;
  const int64_t channels = int64_t{cfg.group} * cfg.group_channels;
  TORCH_CHECK(input.size(3) == channels, "DCNv3: input has ", input.size(3),
              " channels, group * group_channels = ", channels);
  const std::vector<int64_t> want_offset{input.size(0), out_h, out_w,
                                         cfg.group * points * 2};
  TORCH_CHECK(offset.sizes() == want_offset, "DCNv3: offset has shape ",
              offset.sizes(), ", expected ", want_offset);
  const std::vector<int64_t> want_mask{input.size(0), out_h, out_w,
                                       cfg.group * points};
  TORCH_CHECK(mask.sizes() == want_mask, "DCNv3: mask has shape ",
              mask.sizes(), ", expected ", want_mask);
  const std::vector<int64_t> want_out{input.size(0), out_h, out_w, channels};
  TORCH_CHECK(!grad_output.defined() || grad_output.sizes() == want_out,
              "DCNv3: grad_output has shape ", grad_output.sizes(),
              ", expected ", want_out);
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
