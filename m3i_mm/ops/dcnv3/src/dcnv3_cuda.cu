// DCNv3 core, CUDA kernels (forward and backward; fp64, fp32, fp16, bf16).
//
// Semantics match functional.py: the sampling location of kernel point
// (i, j) for output pixel (oy, ox) is
//   x = ox * stride_w - pad_w + half_w * (1 - s) + (i * dilation_w + dx) * s
//   y = oy * stride_h - pad_h + half_h * (1 - s) + (j * dilation_h + dy) * s
// with half = dilation * (kernel - 1) / 2 and s the offset scale; the input
// is sampled bilinearly with zeros outside the image. Arithmetic is done in
// the op-math type (float for fp16/bf16/fp32, double for fp64).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "dcnv3.h"

namespace m3i_mm {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;

// Sizes and options passed by value to the kernels.
struct Geometry {
  int64_t height, width, channels;  // input
  int64_t out_h, out_w;
  int group, group_channels, points;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  int dilation_h, dilation_w;
  bool remove_center;
};

Geometry make_geometry(const at::Tensor& input, const at::Tensor& offset,
                       const DCNv3Config& cfg) {
  Geometry geo;
  geo.height = input.size(1);
  geo.width = input.size(2);
  geo.channels = input.size(3);
  geo.out_h = offset.size(1);
  geo.out_w = offset.size(2);
  geo.group = cfg.group;
  geo.group_channels = cfg.group_channels;
  geo.points = cfg.kernel_h * cfg.kernel_w - (cfg.remove_center ? 1 : 0);
  geo.kernel_h = cfg.kernel_h;
  geo.kernel_w = cfg.kernel_w;
  geo.stride_h = cfg.stride_h;
  geo.stride_w = cfg.stride_w;
  geo.pad_h = cfg.pad_h;
  geo.pad_w = cfg.pad_w;
  geo.dilation_h = cfg.dilation_h;
  geo.dilation_w = cfg.dilation_w;
  geo.remove_center = cfg.remove_center;
  return geo;
}

int64_t num_blocks(int64_t work) {
  return std::max<int64_t>(
      1, std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks));
}

// Kernel column i and row j of point p (points are x-major, centre skipped
// when remove_center is set).
__device__ __forceinline__ void point_coords(const Geometry& geo, int p,
                                             int& i, int& j) {
  if (geo.remove_center) {
    const int center = (geo.kernel_w / 2) * geo.kernel_h + geo.kernel_h / 2;
    p += p >= center ? 1 : 0;
  }
  i = p / geo.kernel_h;
  j = p % geo.kernel_h;
}

// Sampling location of kernel point (i, j) for output pixel (oy, ox).
template <typename acc_t>
__device__ __forceinline__ void sample_location(const Geometry& geo,
                                                acc_t scale, int64_t oy,
                                                int64_t ox, int i, int j,
                                                acc_t dx, acc_t dy, acc_t& x,
                                                acc_t& y) {
  const int half_w = (geo.dilation_w * (geo.kernel_w - 1)) / 2;
  const int half_h = (geo.dilation_h * (geo.kernel_h - 1)) / 2;
  x = static_cast<acc_t>(ox * geo.stride_w - geo.pad_w) +
      half_w * (1 - scale) + (i * geo.dilation_w + dx) * scale;
  y = static_cast<acc_t>(oy * geo.stride_h - geo.pad_h) +
      half_h * (1 - scale) + (j * geo.dilation_h + dy) * scale;
}

// The four bilinear corners of a location inside (-1, H) x (-1, W).
template <typename acc_t>
struct Corners {
  int64_t y_lo, x_lo;
  acc_t ly, lx, hy, hx;  // fractions and their complements
  bool y_lo_in, y_hi_in, x_lo_in, x_hi_in;

  __device__ __forceinline__ Corners(const Geometry& geo, acc_t y, acc_t x) {
    y_lo = static_cast<int64_t>(floor(y));
    x_lo = static_cast<int64_t>(floor(x));
    ly = y - y_lo;
    lx = x - x_lo;
    hy = 1 - ly;
    hx = 1 - lx;
    y_lo_in = y_lo >= 0;
    y_hi_in = y_lo + 1 < geo.height;
    x_lo_in = x_lo >= 0;
    x_hi_in = x_lo + 1 < geo.width;
  }

  // Element offset of corner (dy, dx) in a channels-last image.
  __device__ __forceinline__ int64_t at(const Geometry& geo, int dy,
                                        int dx) const {
    return ((y_lo + dy) * geo.width + x_lo + dx) * geo.channels;
  }
};

// Whether a location can touch the image (the official kernels' check).
template <typename acc_t>
__device__ __forceinline__ bool inside(const Geometry& geo, acc_t y, acc_t x) {
  return y > -1 && x > -1 && y < static_cast<acc_t>(geo.height) &&
         x < static_cast<acc_t>(geo.width);
}

// One thread per output element (n, oy, ox, g, c).
template <typename scalar_t>
__global__ void dcnv3_forward_kernel(const scalar_t* __restrict__ input,
                                     const scalar_t* __restrict__ offset,
                                     const scalar_t* __restrict__ mask,
                                     scalar_t* __restrict__ output,
                                     const Geometry geo,
                                     const at::opmath_type<scalar_t> scale,
                                     const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) +
                       threadIdx.x;
       index < total; index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t rest = index;
    const int c = rest % geo.group_channels;
    rest /= geo.group_channels;
    const int g = rest % geo.group;
    rest /= geo.group;
    const int64_t ox = rest % geo.out_w;
    rest /= geo.out_w;
    const int64_t oy = rest % geo.out_h;
    const int64_t n = rest / geo.out_h;

    const int64_t sample = ((n * geo.out_h + oy) * geo.out_w + ox) * geo.group +
                           g;  // (n, oy, ox, g)
    const scalar_t* off = offset + sample * geo.points * 2;
    const scalar_t* msk = mask + sample * geo.points;
    const scalar_t* image = input + n * geo.height * geo.width * geo.channels +
                            g * geo.group_channels + c;

    acc_t acc = 0;
    for (int p = 0; p < geo.points; ++p) {
      int i, j;
      point_coords(geo, p, i, j);
      acc_t x, y;
      sample_location<acc_t>(geo, scale, oy, ox, i, j,
                             static_cast<acc_t>(off[2 * p]),
                             static_cast<acc_t>(off[2 * p + 1]), x, y);
      if (!inside(geo, y, x)) continue;
      const Corners<acc_t> cr(geo, y, x);
      acc_t value = 0;
      if (cr.y_lo_in && cr.x_lo_in)
        value += cr.hy * cr.hx * static_cast<acc_t>(image[cr.at(geo, 0, 0)]);
      if (cr.y_lo_in && cr.x_hi_in)
        value += cr.hy * cr.lx * static_cast<acc_t>(image[cr.at(geo, 0, 1)]);
      if (cr.y_hi_in && cr.x_lo_in)
        value += cr.ly * cr.hx * static_cast<acc_t>(image[cr.at(geo, 1, 0)]);
      if (cr.y_hi_in && cr.x_hi_in)
        value += cr.ly * cr.lx * static_cast<acc_t>(image[cr.at(geo, 1, 1)]);
      acc += static_cast<acc_t>(msk[p]) * value;
    }
    output[index] = static_cast<scalar_t>(acc);
  }
}

// One thread per sampling point (n, oy, ox, g, p): it owns the point's
// offset and mask gradients (a loop over the group's channels, no
// reduction across threads) and scatters the input gradient atomically into
// an op-math buffer.
template <typename scalar_t>
__global__ void dcnv3_backward_kernel(
    const scalar_t* __restrict__ input, const scalar_t* __restrict__ offset,
    const scalar_t* __restrict__ mask,
    const scalar_t* __restrict__ grad_output,
    at::opmath_type<scalar_t>* __restrict__ grad_input,
    scalar_t* __restrict__ grad_offset, scalar_t* __restrict__ grad_mask,
    const Geometry geo, const at::opmath_type<scalar_t> scale,
    const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) +
                       threadIdx.x;
       index < total; index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t rest = index;
    const int p = rest % geo.points;
    rest /= geo.points;
    const int g = rest % geo.group;
    rest /= geo.group;
    const int64_t ox = rest % geo.out_w;
    rest /= geo.out_w;
    const int64_t oy = rest % geo.out_h;
    const int64_t n = rest / geo.out_h;
    const int64_t pixel = (n * geo.out_h + oy) * geo.out_w + ox;

    int i, j;
    point_coords(geo, p, i, j);
    const acc_t m = static_cast<acc_t>(mask[index]);
    acc_t x, y;
    sample_location<acc_t>(geo, scale, oy, ox, i, j,
                           static_cast<acc_t>(offset[2 * index]),
                           static_cast<acc_t>(offset[2 * index + 1]), x, y);
    acc_t grad_m = 0, grad_x = 0, grad_y = 0;
    if (inside(geo, y, x)) {
      const Corners<acc_t> cr(geo, y, x);
      const bool in00 = cr.y_lo_in && cr.x_lo_in;
      const bool in01 = cr.y_lo_in && cr.x_hi_in;
      const bool in10 = cr.y_hi_in && cr.x_lo_in;
      const bool in11 = cr.y_hi_in && cr.x_hi_in;
      const int64_t image_start =
          n * geo.height * geo.width * geo.channels + g * geo.group_channels;
      const scalar_t* image = input + image_start;
      acc_t* grad_image = grad_input + image_start;
      const scalar_t* grad_out =
          grad_output + pixel * geo.channels + g * geo.group_channels;
      const acc_t w00 = cr.hy * cr.hx, w01 = cr.hy * cr.lx;
      const acc_t w10 = cr.ly * cr.hx, w11 = cr.ly * cr.lx;
      for (int c = 0; c < geo.group_channels; ++c) {
        const acc_t go = static_cast<acc_t>(grad_out[c]);
        const acc_t v00 =
            in00 ? static_cast<acc_t>(image[cr.at(geo, 0, 0) + c]) : acc_t(0);
        const acc_t v01 =
            in01 ? static_cast<acc_t>(image[cr.at(geo, 0, 1) + c]) : acc_t(0);
        const acc_t v10 =
            in10 ? static_cast<acc_t>(image[cr.at(geo, 1, 0) + c]) : acc_t(0);
        const acc_t v11 =
            in11 ? static_cast<acc_t>(image[cr.at(geo, 1, 1) + c]) : acc_t(0);
        grad_m += go * (w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11);
        grad_x += go * (cr.hy * (v01 - v00) + cr.ly * (v11 - v10));
        grad_y += go * (cr.hx * (v10 - v00) + cr.lx * (v11 - v01));
        const acc_t go_m = go * m;
        if (in00) gpuAtomicAdd(grad_image + cr.at(geo, 0, 0) + c, w00 * go_m);
        if (in01) gpuAtomicAdd(grad_image + cr.at(geo, 0, 1) + c, w01 * go_m);
        if (in10) gpuAtomicAdd(grad_image + cr.at(geo, 1, 0) + c, w10 * go_m);
        if (in11) gpuAtomicAdd(grad_image + cr.at(geo, 1, 1) + c, w11 * go_m);
      }
    }
    grad_mask[index] = static_cast<scalar_t>(grad_m);
    grad_offset[2 * index] = static_cast<scalar_t>(grad_x * m * scale);
    grad_offset[2 * index + 1] = static_cast<scalar_t>(grad_y * m * scale);
  }
}

}  // namespace

at::Tensor dcnv3_cuda_forward(const at::Tensor& input,
                              const at::Tensor& offset,
                              const at::Tensor& mask,
                              const DCNv3Config& cfg) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const Geometry geo = make_geometry(input, offset, cfg);
  auto output = at::empty(
      {input.size(0), geo.out_h, geo.out_w, geo.channels}, input.options());
  const int64_t total = output.numel();
  if (total == 0) return output;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(),
      "dcnv3_cuda_forward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        dcnv3_forward_kernel<scalar_t>
            <<<num_blocks(total), kThreads, 0, stream>>>(
                input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
                mask.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), geo,
                static_cast<acc_t>(cfg.offset_scale), total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

std::vector<at::Tensor> dcnv3_cuda_backward(const at::Tensor& input,
                                            const at::Tensor& offset,
                                            const at::Tensor& mask,
                                            const at::Tensor& grad_output,
                                            const DCNv3Config& cfg) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const Geometry geo = make_geometry(input, offset, cfg);
  const auto acc_type = at::toOpMathType(input.scalar_type());
  auto grad_input = at::zeros(input.sizes(), input.options().dtype(acc_type));
  auto grad_offset = at::empty_like(offset);
  auto grad_mask = at::empty_like(mask);
  const int64_t total = mask.numel();
  if (total > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(),
        "dcnv3_cuda_backward", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          dcnv3_backward_kernel<scalar_t>
              <<<num_blocks(total), kThreads, 0, stream>>>(
                  input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
                  mask.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
                  grad_input.data_ptr<acc_t>(),
                  grad_offset.data_ptr<scalar_t>(),
                  grad_mask.data_ptr<scalar_t>(), geo,
                  static_cast<acc_t>(cfg.offset_scale), total);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return {grad_input.to(input.scalar_type()), grad_offset, grad_mask};
}

}  // namespace m3i_mm
