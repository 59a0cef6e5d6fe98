// DCNv3 core: what one thread of each kernel computes.
//
// The kernels in dcnv3_cuda.cu call these functions on the device; the CPU
// tests compile this header for the host
// (tests/native/dcnv3_host_emulation.cpp)
// and run the same functions in the kernels' thread order, so the indexing
// and arithmetic of the kernels are checked without a GPU. On the host an
// atomic add is a plain add.
//
// Semantics match functional.py: the sampling location of kernel point
// (i, j) for output pixel (oy, ox) is
//   x = ox * stride_w - pad_w + half_w * (1 - s) + (i * dilation_w + dx) * s
//   y = oy * stride_h - pad_h + half_h * (1 - s) + (j * dilation_h + dy) * s
// with half = dilation * (kernel - 1) / 2 and s the offset scale; the input
// is sampled bilinearly with zeros outside the image. Arithmetic is done in
// the op-math type (float for fp16/bf16/fp32, double for fp64).
//
// A "sample" is one (n, oy, ox, g): flat index ((n * Ho + oy) * Wo + ox) * G
// + g, the row of its offsets and masks, and output channels
// [sample * Cg, (sample + 1) * Cg).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include "dcnv3.h"

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#include <ATen/cuda/Atomic.cuh>
#endif

namespace m3i_mm {
namespace dcnv3 {

// Sizes and options passed by value to the kernels.
struct Geometry {
  int64_t height, width, channels;  // input
  int64_t out_h, out_w;
  int group, group_channels, points;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  int dilation_h, dilation_w;
  bool remove_center;
};

inline Geometry make_geometry(const at::Tensor& input, const at::Tensor& offset,
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

// Bytes of one vectorised load or store (128 bits).
constexpr int kVectorBytes = 16;

// K consecutive channels, moved as one load or store when aligned.
template <typename scalar_t, int K>
struct alignas(sizeof(scalar_t) * K) Pack {
  scalar_t value[K];
};

// Adds `value` at `ptr`: atomically on the device, plainly on the host.
template <typename acc_t>
C10_HOST_DEVICE inline void scatter_add(acc_t* ptr, acc_t value) {
#ifdef __CUDA_ARCH__
  gpuAtomicAdd(ptr, value);
#else
  *ptr += value;
#endif
}

struct Sample {
  int64_t n, oy, ox;
  int g;
};

C10_HOST_DEVICE inline Sample decode_sample(const Geometry& geo,
                                            int64_t sample) {
  Sample s;
  s.g = static_cast<int>(sample % geo.group);
  int64_t rest = sample / geo.group;
  s.ox = rest % geo.out_w;
  rest /= geo.out_w;
  s.oy = rest % geo.out_h;
  s.n = rest / geo.out_h;
  return s;
}

// Offset of channel 0 of group g in image n of a channels-last input.
C10_HOST_DEVICE inline int64_t image_start(const Geometry& geo,
                                           const Sample& s) {
  return s.n * geo.height * geo.width * geo.channels +
         static_cast<int64_t>(s.g) * geo.group_channels;
}

// Kernel column i and row j of point p (points are x-major, centre skipped
// when remove_center is set).
C10_HOST_DEVICE inline void point_coords(const Geometry& geo, int p, int& i,
                                         int& j) {
  if (geo.remove_center) {
    const int center = (geo.kernel_w / 2) * geo.kernel_h + geo.kernel_h / 2;
    p += p >= center ? 1 : 0;
  }
  i = p / geo.kernel_h;
  j = p % geo.kernel_h;
}

// Sampling location (x, y) of point p of a sample, in input pixels.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void sample_location(const Geometry& geo, acc_t scale,
                                            const Sample& s,
                                            const scalar_t* offset, int p,
                                            acc_t& x, acc_t& y) {
  int i, j;
  point_coords(geo, p, i, j);
  const acc_t dx = static_cast<acc_t>(offset[2 * p]);
  const acc_t dy = static_cast<acc_t>(offset[2 * p + 1]);
  const int half_w = (geo.dilation_w * (geo.kernel_w - 1)) / 2;
  const int half_h = (geo.dilation_h * (geo.kernel_h - 1)) / 2;
  x = static_cast<acc_t>(s.ox * geo.stride_w - geo.pad_w) +
      half_w * (1 - scale) + (i * geo.dilation_w + dx) * scale;
  y = static_cast<acc_t>(s.oy * geo.stride_h - geo.pad_h) +
      half_h * (1 - scale) + (j * geo.dilation_h + dy) * scale;
}

// Whether a location can touch the image (the official kernels' check).
template <typename acc_t>
C10_HOST_DEVICE inline bool inside(const Geometry& geo, acc_t y, acc_t x) {
  return y > -1 && x > -1 && y < static_cast<acc_t>(geo.height) &&
         x < static_cast<acc_t>(geo.width);
}

// The four bilinear corners of a location inside (-1, H) x (-1, W).
template <typename acc_t>
struct Corners {
  int64_t y_lo, x_lo;
  acc_t ly, lx, hy, hx;  // fractions and their complements
  bool in00, in01, in10, in11;

  C10_HOST_DEVICE Corners(const Geometry& geo, acc_t y, acc_t x) {
    y_lo = static_cast<int64_t>(floor(y));
    x_lo = static_cast<int64_t>(floor(x));
    ly = y - y_lo;
    lx = x - x_lo;
    hy = 1 - ly;
    hx = 1 - lx;
    const bool y_lo_in = y_lo >= 0, y_hi_in = y_lo + 1 < geo.height;
    const bool x_lo_in = x_lo >= 0, x_hi_in = x_lo + 1 < geo.width;
    in00 = y_lo_in && x_lo_in;
    in01 = y_lo_in && x_hi_in;
    in10 = y_hi_in && x_lo_in;
    in11 = y_hi_in && x_hi_in;
  }

  // Element offset of corner (dy, dx) in a channels-last image.
  C10_HOST_DEVICE int64_t at(const Geometry& geo, int dy, int dx) const {
    return ((y_lo + dy) * geo.width + x_lo + dx) * geo.channels;
  }
};

// value[k] += weight * corner[k] for K channels loaded as one Pack.
template <typename scalar_t, int K, typename acc_t>
C10_HOST_DEVICE inline void add_corner(acc_t (&value)[K],
                                       const scalar_t* corner, acc_t weight) {
  const Pack<scalar_t, K> v = *reinterpret_cast<const Pack<scalar_t, K>*>(
      corner);
#pragma unroll
  for (int k = 0; k < K; ++k)
    value[k] += weight * static_cast<acc_t>(v.value[k]);
}

// Forward thread `index`: channels [c, c + K) of one sample, index =
// sample * (Cg / K) + c / K. K = 1 is one thread per output element; K > 1
// needs Cg % K == 0 and input and output aligned to sizeof(Pack).
template <typename scalar_t, int K>
C10_HOST_DEVICE inline void forward_thread(
    const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
    scalar_t* output, const Geometry& geo,
    at::opmath_type<scalar_t> scale, int64_t index) {
  using acc_t = at::opmath_type<scalar_t>;
  const int packs = geo.group_channels / K;
  const int c = static_cast<int>(index % packs) * K;
  const int64_t sample = index / packs;
  const Sample s = decode_sample(geo, sample);
  const scalar_t* off = offset + sample * geo.points * 2;
  const scalar_t* msk = mask + sample * geo.points;
  const scalar_t* image = input + image_start(geo, s) + c;

  acc_t acc[K] = {};
  for (int p = 0; p < geo.points; ++p) {
    acc_t x, y;
    sample_location(geo, scale, s, off, p, x, y);
    if (!inside(geo, y, x)) continue;
    const Corners<acc_t> cr(geo, y, x);
    acc_t value[K] = {};
    if (cr.in00) add_corner<scalar_t, K>(value, image + cr.at(geo, 0, 0),
                                         cr.hy * cr.hx);
    if (cr.in01) add_corner<scalar_t, K>(value, image + cr.at(geo, 0, 1),
                                         cr.hy * cr.lx);
    if (cr.in10) add_corner<scalar_t, K>(value, image + cr.at(geo, 1, 0),
                                         cr.ly * cr.hx);
    if (cr.in11) add_corner<scalar_t, K>(value, image + cr.at(geo, 1, 1),
                                         cr.ly * cr.lx);
    const acc_t m = static_cast<acc_t>(msk[p]);
#pragma unroll
    for (int k = 0; k < K; ++k) acc[k] += m * value[k];
  }
  Pack<scalar_t, K> out;
#pragma unroll
  for (int k = 0; k < K; ++k) out.value[k] = static_cast<scalar_t>(acc[k]);
  *reinterpret_cast<Pack<scalar_t, K>*>(output + sample * geo.group_channels +
                                         c) = out;
}

// Gradients of one sampling point: of its mask, and of its location (x, y)
// before the chain rule through mask and offset scale.
template <typename acc_t>
struct PointGrads {
  acc_t mask, x, y;

  C10_HOST_DEVICE PointGrads& operator+=(const PointGrads& other) {
    mask += other.mask;
    x += other.x;
    y += other.y;
    return *this;
  }
};

// Channel c's share of one point's gradients, given that channel's output
// gradient `go`; scatters go * m * weight into grad_input's four corners.
// `image` and `grad_image` point at channel c of the sample's image.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline PointGrads<acc_t> channel_point_grads(
    const Geometry& geo, const Corners<acc_t>& cr, const scalar_t* image,
    acc_t* grad_image, acc_t go, acc_t m) {
  const acc_t w00 = cr.hy * cr.hx, w01 = cr.hy * cr.lx;
  const acc_t w10 = cr.ly * cr.hx, w11 = cr.ly * cr.lx;
  const int64_t a00 = cr.at(geo, 0, 0), a01 = cr.at(geo, 0, 1);
  const int64_t a10 = cr.at(geo, 1, 0), a11 = cr.at(geo, 1, 1);
  const acc_t v00 = cr.in00 ? static_cast<acc_t>(image[a00]) : acc_t(0);
  const acc_t v01 = cr.in01 ? static_cast<acc_t>(image[a01]) : acc_t(0);
  const acc_t v10 = cr.in10 ? static_cast<acc_t>(image[a10]) : acc_t(0);
  const acc_t v11 = cr.in11 ? static_cast<acc_t>(image[a11]) : acc_t(0);
  const acc_t go_m = go * m;
  if (cr.in00) scatter_add(grad_image + a00, w00 * go_m);
  if (cr.in01) scatter_add(grad_image + a01, w01 * go_m);
  if (cr.in10) scatter_add(grad_image + a10, w10 * go_m);
  if (cr.in11) scatter_add(grad_image + a11, w11 * go_m);
  return {go * (w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11),
          go * (cr.hy * (v01 - v00) + cr.ly * (v11 - v10)),
          go * (cr.hx * (v10 - v00) + cr.lx * (v11 - v01))};
}

// Writes the gradients of point `point` (= sample * P + p): no other thread
// writes them.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void write_point_grads(const Geometry& geo,
                                              const scalar_t* mask,
                                              scalar_t* grad_offset,
                                              scalar_t* grad_mask,
                                              int64_t point,
                                              const PointGrads<acc_t>& grads,
                                              acc_t scale) {
  const acc_t m = static_cast<acc_t>(mask[point]);
  grad_mask[point] = static_cast<scalar_t>(grads.mask);
  grad_offset[2 * point] = static_cast<scalar_t>(grads.x * m * scale);
  grad_offset[2 * point + 1] = static_cast<scalar_t>(grads.y * m * scale);
}

// Backward thread `index` of the point kernel (any Cg): sampling point
// index = sample * P + p, a loop over the group's channels, no reduction
// across threads.
template <typename scalar_t>
C10_HOST_DEVICE inline void backward_point_thread(
    const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
    const scalar_t* grad_output, at::opmath_type<scalar_t>* grad_input,
    scalar_t* grad_offset, scalar_t* grad_mask, const Geometry& geo,
    at::opmath_type<scalar_t> scale, int64_t index) {
  using acc_t = at::opmath_type<scalar_t>;
  const int p = static_cast<int>(index % geo.points);
  const int64_t sample = index / geo.points;
  const Sample s = decode_sample(geo, sample);
  acc_t x, y;
  sample_location(geo, scale, s, offset + sample * geo.points * 2, p, x, y);
  PointGrads<acc_t> grads{0, 0, 0};
  if (inside(geo, y, x)) {
    const Corners<acc_t> cr(geo, y, x);
    const acc_t m = static_cast<acc_t>(mask[index]);
    const int64_t start = image_start(geo, s);
    const scalar_t* grad_out = grad_output + sample * geo.group_channels;
    for (int c = 0; c < geo.group_channels; ++c)
      grads += channel_point_grads(geo, cr, input + start + c,
                                   grad_input + start + c,
                                   static_cast<acc_t>(grad_out[c]), m);
  }
  write_point_grads(geo, mask, grad_offset, grad_mask, index, grads, scale);
}

// What a lane of the lane backward keeps across its points: channel c of
// one sample (lane index = sample * Cg + c) and that channel's output
// gradient.
template <typename scalar_t>
struct Lane {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t sample = 0;
  Sample s{0, 0, 0, 0};
  int64_t start = 0;  // element offset of channel c in the sample's image
  acc_t go = 0;
};

template <typename scalar_t>
C10_HOST_DEVICE inline Lane<scalar_t> make_lane(const Geometry& geo,
                                                const scalar_t* grad_output,
                                                int64_t index) {
  Lane<scalar_t> lane;
  lane.sample = index / geo.group_channels;
  lane.s = decode_sample(geo, lane.sample);
  lane.start = image_start(geo, lane.s) + index % geo.group_channels;
  lane.go = static_cast<at::opmath_type<scalar_t>>(grad_output[index]);
  return lane;
}

// A lane's share of point p's gradients; the kernel sums the shares of the
// sample's Cg lanes (a warp shuffle).
template <typename scalar_t>
C10_HOST_DEVICE inline PointGrads<at::opmath_type<scalar_t>> lane_point_grads(
    const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
    at::opmath_type<scalar_t>* grad_input, const Geometry& geo,
    at::opmath_type<scalar_t> scale, const Lane<scalar_t>& lane, int p) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t x, y;
  sample_location(geo, scale, lane.s, offset + lane.sample * geo.points * 2,
                  p, x, y);
  if (!inside(geo, y, x)) return {0, 0, 0};
  const Corners<acc_t> cr(geo, y, x);
  return channel_point_grads(
      geo, cr, input + lane.start, grad_input + lane.start, lane.go,
      static_cast<acc_t>(mask[lane.sample * geo.points + p]));
}

// The kernels' choice (host side; the emulation makes the same).
// Channels per vector-forward thread: 16 bytes of them where Cg and the
// input's and output's addresses allow, else 1.
inline bool vector_aligned(const void* ptr) {
  return reinterpret_cast<std::uintptr_t>(ptr) % kVectorBytes == 0;
}

template <typename scalar_t>
inline int forward_pack(const Geometry& geo, bool aligned) {
  constexpr int K = kVectorBytes / sizeof(scalar_t);
  return aligned && geo.group_channels % K == 0 ? K : 1;
}

// Whether the lane backward can sum a sample's channels in one warp.
inline bool lanes_fit(const Geometry& geo) {
  const int width = geo.group_channels;
  return width > 0 && width <= 32 && (width & (width - 1)) == 0;
}

}  // namespace dcnv3
}  // namespace m3i_mm
