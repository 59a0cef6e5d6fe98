// Host emulation of the DCNv3 CUDA kernels, for the CPU tests.
//
// Runs the kernels' per-thread functions (m3i_mm/ops/dcnv3/src/
// dcnv3_thread.cuh) on CPU tensors, one thread after another in the order of
// the kernels' flat thread index, with the extension's signatures, shape
// checks and kernel choice. The lane backward's warp shuffle is emulated as
// the same xor butterfly; atomics are plain adds. Outputs start as NaN (the
// extension's are uninitialised): an element no thread writes shows.
#include <torch/extension.h>

#include <limits>
#include <vector>

#include "dcnv3_thread.cuh"

namespace {

using m3i_mm::check_shapes;
using m3i_mm::DCNv3Config;
using m3i_mm::make_config;
using namespace m3i_mm::dcnv3;

at::Tensor unwritten(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), options);
}

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

at::Tensor forward(const at::Tensor& input, const at::Tensor& offset,
                   const at::Tensor& mask, int64_t kernel_h, int64_t kernel_w,
                   int64_t stride_h, int64_t stride_w, int64_t pad_h,
                   int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
                   int64_t group, int64_t group_channels, double scale,
                   bool remove_center, bool simple) {
  const DCNv3Config cfg =
      make_config(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                  dilation_h, dilation_w, group, group_channels, scale,
                  remove_center);
  check_shapes(input, offset, mask, at::Tensor(), cfg);
  const Geometry geo = make_geometry(input, offset, cfg);
  auto output = unwritten(
      {input.size(0), geo.out_h, geo.out_w, geo.channels}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(),
      "forward", [&] {
        constexpr int K = kVectorBytes / sizeof(scalar_t);
        const bool aligned = vector_aligned(input.data_ptr()) &&
                             vector_aligned(output.data_ptr());
        if (!simple && forward_pack<scalar_t>(geo, aligned) == K)
          run_forward<scalar_t, K>(input, offset, mask, output, geo, scale);
        else
          run_forward<scalar_t, 1>(input, offset, mask, output, geo, scale);
      });
  return output;
}

std::vector<at::Tensor> backward(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& grad_output, int64_t kernel_h, int64_t kernel_w,
    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group,
    int64_t group_channels, double scale, bool remove_center, bool simple) {
  const DCNv3Config cfg =
      make_config(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                  dilation_h, dilation_w, group, group_channels, scale,
                  remove_center);
  check_shapes(input, offset, mask, grad_output, cfg);
  const Geometry geo = make_geometry(input, offset, cfg);
  const bool lanes = !simple && lanes_fit(geo);
  auto grad_input = at::zeros(
      input.sizes(),
      input.options().dtype(at::toOpMathType(input.scalar_type())));
  auto grad_offset = unwritten(offset.sizes(), offset.options());
  auto grad_mask = unwritten(mask.sizes(), mask.options());
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
        const int width = geo.group_channels;
        std::vector<Lane<scalar_t>> group(width);
        std::vector<PointGrads<acc_t>> shares(width), before(width);
        for (int64_t sample = 0; sample < mask.numel() / geo.points;
             ++sample) {
          for (int c = 0; c < width; ++c)
            group[c] = make_lane(geo, go, sample * width + c);
          for (int p = 0; p < geo.points; ++p) {
            for (int c = 0; c < width; ++c)
              shares[c] = lane_point_grads(in, off, msk, gi, geo, s, group[c],
                                           p);
            for (int delta = width / 2; delta > 0; delta /= 2) {
              before = shares;
              for (int lane = 0; lane < width; ++lane)
                shares[lane] += before[lane ^ delta];
            }
            write_point_grads(geo, msk, goff, gm,
                              group[0].sample * geo.points + p, shares[0], s);
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
