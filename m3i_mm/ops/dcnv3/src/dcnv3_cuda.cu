// DCNv3 core, CUDA kernels (forward and backward; fp64, fp32, fp16, bf16).
//
// Each thread's arithmetic is in dcnv3_thread.cuh (shared with the CPU
// tests' host emulation); this file launches it. Two kernels each way:
//   forward  vector: K = 16 bytes of channels per thread, one 128-bit load
//                    per bilinear corner (Cg % K == 0, aligned tensors);
//            simple: one thread per output element (any shape).
//   backward lanes:  one thread per (sample, channel), coalesced loads and
//                    grad_input atomics; a sample's Cg lanes sum the offset
//                    and mask gradients with warp shuffles, so those take no
//                    atomics (Cg a power of two <= 32);
//            points: one thread per sampling point looping over the
//                    group's channels (any Cg).
// The simple/points pair is the first implementation, kept for the shapes
// the fast pair does not take and as the benchmark's baseline.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "dcnv3.h"
#include "dcnv3_thread.cuh"

namespace m3i_mm {
namespace {

using dcnv3::Geometry;
using dcnv3::make_geometry;
using dcnv3::PointGrads;

constexpr int kThreads = 256;
static_assert(kThreads % 32 == 0, "the lane backward needs whole warps");
constexpr int64_t kMaxBlocks = 1 << 16;
constexpr unsigned kFullWarp = 0xffffffffu;

// Blocks of a grid-stride loop over `work` threads.
int64_t strided_blocks(int64_t work) {
  return std::max<int64_t>(
      1, std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks));
}

// body(index) for every index in [0, threads), over a grid-stride loop.
template <typename Body>
__device__ __forceinline__ void grid_stride(int64_t threads,
                                            const Body& body) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) +
                       threadIdx.x;
       index < threads; index += static_cast<int64_t>(blockDim.x) * gridDim.x)
    body(index);
}

template <typename scalar_t, int K>
__global__ void dcnv3_forward_kernel(const scalar_t* __restrict__ input,
                                     const scalar_t* __restrict__ offset,
                                     const scalar_t* __restrict__ mask,
                                     scalar_t* __restrict__ output,
                                     const Geometry geo,
                                     const at::opmath_type<scalar_t> scale,
                                     const int64_t threads) {
  grid_stride(threads, [&](int64_t index) {
    dcnv3::forward_thread<scalar_t, K>(input, offset, mask, output, geo, scale,
                                       index);
  });
}

// Sum over the `width` lanes of an aligned group (butterfly: every lane
// ends with the sum).
template <typename acc_t>
__device__ __forceinline__ PointGrads<acc_t> lane_sum(PointGrads<acc_t> v,
                                                      int width) {
  for (int delta = width / 2; delta > 0; delta /= 2) {
    v.mask += __shfl_xor_sync(kFullWarp, v.mask, delta);
    v.x += __shfl_xor_sync(kFullWarp, v.x, delta);
    v.y += __shfl_xor_sync(kFullWarp, v.y, delta);
  }
  return v;
}

// Lanes (kLanes): one thread per (sample, channel) and no grid-stride loop,
// so that every lane of a warp reaches the shuffles (lanes past the end add
// zeros). Points: one thread per sampling point, grid-stride.
template <typename scalar_t, bool kLanes>
__global__ void dcnv3_backward_kernel(
    const scalar_t* __restrict__ input, const scalar_t* __restrict__ offset,
    const scalar_t* __restrict__ mask,
    const scalar_t* __restrict__ grad_output,
    at::opmath_type<scalar_t>* __restrict__ grad_input,
    scalar_t* __restrict__ grad_offset, scalar_t* __restrict__ grad_mask,
    const Geometry geo, const at::opmath_type<scalar_t> scale,
    const int64_t threads) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (!kLanes) {
    grid_stride(threads, [&](int64_t index) {
      dcnv3::backward_point_thread(input, offset, mask, grad_output,
                                   grad_input, grad_offset, grad_mask, geo,
                                   scale, index);
    });
  } else {
    const int64_t index =
        blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    const bool active = index < threads;
    const bool writer = active && index % geo.group_channels == 0;
    dcnv3::Lane<scalar_t> lane;
    if (active) lane = dcnv3::make_lane(geo, grad_output, index);
    for (int p = 0; p < geo.points; ++p) {
      PointGrads<acc_t> grads{0, 0, 0};
      if (active)
        grads = dcnv3::lane_point_grads(input, offset, mask, grad_input, geo,
                                        scale, lane, p);
      grads = lane_sum(grads, geo.group_channels);
      if (writer)
        dcnv3::write_point_grads(geo, mask, grad_offset, grad_mask,
                                 lane.sample * geo.points + p, grads, scale);
    }
  }
}

template <typename scalar_t, bool kLanes>
void launch_backward(const at::Tensor& input, const at::Tensor& offset,
                     const at::Tensor& mask, const at::Tensor& grad_output,
                     at::Tensor& grad_input, at::Tensor& grad_offset,
                     at::Tensor& grad_mask, const Geometry& geo,
                     double offset_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t threads = kLanes ? grad_output.numel() : mask.numel();
  const int64_t blocks =
      kLanes ? (threads + kThreads - 1) / kThreads : strided_blocks(threads);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
              "DCNv3 CUDA: ", threads, " threads are too many for one grid");
  dcnv3_backward_kernel<scalar_t, kLanes>
      <<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
          mask.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
          grad_input.data_ptr<acc_t>(), grad_offset.data_ptr<scalar_t>(),
          grad_mask.data_ptr<scalar_t>(), geo,
          static_cast<acc_t>(offset_scale), threads);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int K>
void launch_forward(const at::Tensor& input, const at::Tensor& offset,
                    const at::Tensor& mask, at::Tensor& output,
                    const Geometry& geo, double offset_scale) {
  const int64_t threads = output.numel() / K;
  dcnv3_forward_kernel<scalar_t, K>
      <<<strided_blocks(threads), kThreads, 0,
         c10::cuda::getCurrentCUDAStream()>>>(
          input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
          mask.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), geo,
          static_cast<at::opmath_type<scalar_t>>(offset_scale), threads);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor dcnv3_cuda_forward(const at::Tensor& input,
                              const at::Tensor& offset,
                              const at::Tensor& mask,
                              const DCNv3Config& cfg, bool simple) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const Geometry geo = make_geometry(input, offset, cfg);
  auto output = at::empty(
      {input.size(0), geo.out_h, geo.out_w, geo.channels}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(),
      "dcnv3_cuda_forward", [&] {
        constexpr int K = dcnv3::kVectorBytes / sizeof(scalar_t);
        const bool aligned = dcnv3::vector_aligned(input.data_ptr()) &&
                             dcnv3::vector_aligned(output.data_ptr());
        if (!simple && dcnv3::forward_pack<scalar_t>(geo, aligned) == K)
          launch_forward<scalar_t, K>(input, offset, mask, output, geo,
                                      cfg.offset_scale);
        else
          launch_forward<scalar_t, 1>(input, offset, mask, output, geo,
                                      cfg.offset_scale);
      });
  return output;
}

std::vector<at::Tensor> dcnv3_cuda_backward(const at::Tensor& input,
                                            const at::Tensor& offset,
                                            const at::Tensor& mask,
                                            const at::Tensor& grad_output,
                                            const DCNv3Config& cfg,
                                            bool simple) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const Geometry geo = make_geometry(input, offset, cfg);
  const auto acc_type = at::toOpMathType(input.scalar_type());
  auto grad_input = at::zeros(input.sizes(), input.options().dtype(acc_type));
  auto grad_offset = at::empty_like(offset);
  auto grad_mask = at::empty_like(mask);
  if (mask.numel() > 0) {
    const bool lanes = !simple && dcnv3::lanes_fit(geo);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(),
        "dcnv3_cuda_backward", [&] {
          if (lanes)
            launch_backward<scalar_t, true>(input, offset, mask, grad_output,
                                            grad_input, grad_offset,
                                            grad_mask, geo, cfg.offset_scale);
          else
            launch_backward<scalar_t, false>(input, offset, mask, grad_output,
                                             grad_input, grad_offset,
                                             grad_mask, geo, cfg.offset_scale);
        });
  }
  return {grad_input.to(input.scalar_type()), grad_offset, grad_mask};
}

}  // namespace m3i_mm
