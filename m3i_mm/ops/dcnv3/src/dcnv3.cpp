// Python bindings of the DCNv3 CUDA kernels (module m3i_mm._ext_dcnv3).
//
// Shapes are validated in Python (m3i_mm/ops/dcnv3/functional.py,
// check_dcnv3_inputs) before these are called; here we guard what the
// kernels assume: CUDA, one dtype, contiguous memory, matching shapes.
#include <torch/extension.h>

#include <vector>

#include "dcnv3.h"

namespace m3i_mm {
namespace {

void check_tensor(const at::Tensor& tensor, const at::Tensor& input,
                  const char* name) {
  TORCH_CHECK(tensor.is_cuda(), "DCNv3 CUDA: ", name, " must be a CUDA tensor");
  TORCH_CHECK(tensor.device() == input.device(), "DCNv3 CUDA: ", name,
              " is on ", tensor.device(), " but input is on ", input.device());
  TORCH_CHECK(tensor.scalar_type() == input.scalar_type(), "DCNv3 CUDA: ",
              name, " has dtype ", tensor.scalar_type(), " but input has ",
              input.scalar_type());
  TORCH_CHECK(tensor.is_contiguous(), "DCNv3 CUDA: ", name,
              " must be contiguous");
  TORCH_CHECK(tensor.dim() == 4, "DCNv3 CUDA: ", name,
              " must be 4-D (channels-last), got ", tensor.sizes());
}

}  // namespace

at::Tensor dcnv3_forward(const at::Tensor& input, const at::Tensor& offset,
                         const at::Tensor& mask, int64_t kernel_h,
                         int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                         int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                         int64_t dilation_w, int64_t group,
                         int64_t group_channels, double offset_scale,
                         bool remove_center, bool simple) {
  check_tensor(input, input, "input");
  check_tensor(offset, input, "offset");
  check_tensor(mask, input, "mask");
  const DCNv3Config cfg = make_config(
      kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
      dilation_w, group, group_channels, offset_scale, remove_center);
  check_shapes(input, offset, mask, at::Tensor(), cfg);
  return dcnv3_cuda_forward(input, offset, mask, cfg, simple);
}

std::vector<at::Tensor> dcnv3_backward(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& grad_output, int64_t kernel_h, int64_t kernel_w,
    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group,
    int64_t group_channels, double offset_scale, bool remove_center,
    bool simple) {
  check_tensor(input, input, "input");
  check_tensor(offset, input, "offset");
  check_tensor(mask, input, "mask");
  check_tensor(grad_output, input, "grad_output");
  const DCNv3Config cfg = make_config(
      kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
      dilation_w, group, group_channels, offset_scale, remove_center);
  check_shapes(input, offset, mask, grad_output, cfg);
  return dcnv3_cuda_backward(input, offset, mask, grad_output, cfg, simple);
}

}  // namespace m3i_mm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "DCNv3 core (CUDA) for m3i_mm";
  // The last argument, simple, picks the baseline kernels (benchmarks).
  m.def("forward", &m3i_mm::dcnv3_forward, "DCNv3 forward (CUDA)");
  m.def("backward", &m3i_mm::dcnv3_backward,
        "DCNv3 backward (CUDA): grad_input, grad_offset, grad_mask");
}
