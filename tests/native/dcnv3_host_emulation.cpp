// Host emulation of the DCNv3 CUDA kernels, for the CPU tests.
//
// Runs the kernels' per-thread functions (m3i_mm/ops/dcnv3/src/
// dcnv3_thread.cuh) on CPU tensors, one thread after another in the order of
// the kernels' flat thread index. The lane backward's warp shuffle is
// emulated as the same xor butterfly; atomics are plain adds.
#include <torch/extension.h>

#include <vector>

#include "dcnv3_thread.cuh"

namespace {

using m3i_mm::make_config;
using namespace m3i_mm::dcnv3;

template <typename scalar_t, int K>
void run_forward(const at::Tensor& input, const at::Tensor& offset,
                 const at::Tensor& mask, at::Tensor& output,
                 const Geometry& geo, double scale) {
  for (int64_t index = 0; index < output.numel() / K; ++index)
    forward_thread<scalar_t, K>(
        input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
        mask.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), geo,
        static_cast<at::opmath_type<scalar_t>>(scale), index);
}

// The extension's signature and kernel choice (dcnv3_cuda.cu): 16-byte packs
// of channels where Cg allows, unless `simple`.
at::Tensor forward(const at::Tensor& input, const at::Tensor& offset,
                   const at::Tensor& mask, int64_t kernel_h, int64_t kernel_w,
                   int64_t stride_h, int64_t stride_w, int64_t pad_h,
                   int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
                   int64_t group, int64_t group_channels, double scale,
                   bool remove_center, bool simple) {
  const Geometry geo = make_geometry(
      input, offset,
      make_config(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                  dilation_h, dilation_w, group, group_channels, scale,
                  remove_center));
  auto output = at::zeros({input.size(0), geo.out_h, geo.out_w, geo.channels},
                          input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(),
      "forward", [&] {
        constexpr int K = kVectorBytes / sizeof(scalar_t);
        if (!simple && geo.group_channels % K == 0)
          run_forward<scalar_t, K>(input, offset, mask, output, geo, scale);
        else
          run_forward<scalar_t, 1>(input, offset, mask, output, geo, scale);
      });
  return output;
}

// The extension's signature and kernel choice: the lane kernel where Cg is a
// power of two <= 32, unless `simple`.
std::vector<at::Tensor> backward(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& grad_output, int64_t kernel_h, int64_t kernel_w,
    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group,
    int64_t group_channels, double scale, bool remove_center, bool simple) {
  const Geometry geo = make_geometry(
      input, offset,
      make_config(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                  dilation_h, dilation_w, group, group_channels, scale,
                  remove_center));
  const int width = geo.group_channels;
  const bool lanes = !simple && width <= 32 && (width & (width - 1)) == 0;
  auto grad_input = at::zeros(
      input.sizes(),
      input.options().dtype(at::toOpMathType(input.scalar_type())));
  auto grad_offset = at::zeros_like(offset);
  auto grad_mask = at::zeros_like(mask);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(),
      "backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto s = static_cast<acc_t>(scale);
        const scalar_t* in = input.data_ptr<scalar_t>();
        const scalar_t* off = offset.data_ptr<scalar_t>();
        const scalar_t* msk = mask.data_ptr<scalar_t>();
        const scalar_t* go = grad_output.data_ptr<scalar_t>();
        acc_t* gi = grad_input.data_ptr<acc_t>();
        scalar_t* goff = grad_offset.data_ptr<scalar_t>();
        scalar_t* gm = grad_mask.data_ptr<scalar_t>();
        if (!lanes) {
          for (int64_t index = 0; index < mask.numel(); ++index)
            backward_point_thread(in, off, msk, go, gi, goff, gm, geo, s,
                                  index);
          return;
        }
        std::vector<PointGrads<acc_t>> shares(width), before(width);
        for (int64_t sample = 0; sample < mask.numel() / geo.points;
             ++sample) {
          for (int p = 0; p < geo.points; ++p) {
            for (int c = 0; c < width; ++c)
              shares[c] = lane_point_grads(in, off, msk, go, gi, geo, s,
                                           sample * width + c, p);
            for (int delta = width / 2; delta > 0; delta /= 2) {
              before = shares;
              for (int lane = 0; lane < width; ++lane)
                shares[lane] += before[lane ^ delta];
            }
            write_point_grads(geo, msk, goff, gm, sample * geo.points + p,
                              shares[0], s);
          }
        }
      });
  return {grad_input.to(input.scalar_type()), grad_offset, grad_mask};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "DCNv3 forward kernels, emulated on the host");
  m.def("backward", &backward, "DCNv3 backward kernels, emulated on the host");
}
