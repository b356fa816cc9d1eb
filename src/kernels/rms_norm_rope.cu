#include "kernels/rms_norm_rope.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace diffuse::kernels {
namespace {

// Two channels at a time, in the storage type and as floats.
template <typename T>
struct Pair;

template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  __device__ static float2 to_float(type v) { return __bfloat1622float2(v); }
  __device__ static type from_float(float2 v) { return __float22bfloat162_rn(v); }
  // What storing a float in this type and reading it back gives (PyTorch rounds after each op).
  __device__ static float round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
};

template <>
struct Pair<__half> {
  using type = __half2;
  __device__ static float2 to_float(type v) { return __half22float2(v); }
  __device__ static type from_float(float2 v) { return __float22half2_rn(v); }
  __device__ static float round(float v) { return __half2float(__float2half_rn(v)); }
};

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

// PAIRS channel pairs per lane: head_dim = 64 * PAIRS. Lane l holds pairs l, l + 32, ... so that each
// step of the warp reads 128 contiguous bytes.
template <typename T, int PAIRS>
__global__ void rms_norm_rope_kernel(RmsNormRopeArgs a) {
  using P = Pair<T>;
  constexpr int head_dim = 64 * PAIRS;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= a.batch * a.tokens * a.heads) return;
  const int64_t head = row % a.heads, token = (row / a.heads) % a.tokens, b = row / (a.heads * a.tokens);

  const auto* in = reinterpret_cast<const typename P::type*>(static_cast<const T*>(a.x) + b * a.x_batch_stride +
                                                              token * a.x_token_stride + head * head_dim);
  float2 v[PAIRS];
  float squares = 0.f;
#pragma unroll
  for (int i = 0; i < PAIRS; ++i) {
    v[i] = P::to_float(in[lane + kWarp * i]);
    squares += v[i].x * v[i].x + v[i].y * v[i].y;
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  const float rstd = rsqrtf(squares / head_dim + a.eps);

  const auto* weight = reinterpret_cast<const typename P::type*>(a.weight);
  const auto* phasor = reinterpret_cast<const float2*>(a.phasor) + token * (head_dim / 2);
  auto* out = reinterpret_cast<typename P::type*>(static_cast<T*>(a.out) + b * a.out_batch_stride +
                                                  token * a.out_token_stride + head * head_dim);
#pragma unroll
  for (int i = 0; i < PAIRS; ++i) {
    const int pair = lane + kWarp * i;
    const float2 w = P::to_float(weight[pair]);
    // diffusers: (x * rstd) in float32, rounded to the weight's dtype, times the weight (rounded).
    const float re = P::round(P::round(v[i].x * rstd) * w.x);
    const float im = P::round(P::round(v[i].y * rstd) * w.y);
    // Then the rotation (re + i im) * e^(i angle) in float32, rounded once.
    const float2 turn = phasor[pair];
    out[pair] = P::from_float(make_float2(re * turn.x - im * turn.y, re * turn.y + im * turn.x));
  }
}

template <typename T>
void launch(const RmsNormRopeArgs& a, cudaStream_t stream) {
  const int64_t rows = a.batch * a.tokens * a.heads;
  const auto blocks = static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const dim3 threads(kWarp * kWarpsPerBlock);
  switch (a.head_dim / 64) {
    case 1: rms_norm_rope_kernel<T, 1><<<blocks, threads, 0, stream>>>(a); break;
    case 2: rms_norm_rope_kernel<T, 2><<<blocks, threads, 0, stream>>>(a); break;
    case 3: rms_norm_rope_kernel<T, 3><<<blocks, threads, 0, stream>>>(a); break;
    default: rms_norm_rope_kernel<T, 4><<<blocks, threads, 0, stream>>>(a); break;
  }
}

}  // namespace

bool rms_norm_rope_supports(int64_t head_dim) { return head_dim % 64 == 0 && head_dim >= 64 && head_dim <= 256; }

int rms_norm_rope(const RmsNormRopeArgs& args, void* stream) {
  if (!rms_norm_rope_supports(args.head_dim)) return static_cast<int>(cudaErrorInvalidValue);
  if (args.batch * args.tokens * args.heads == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args.half) launch<__half>(args, s);
  else launch<__nv_bfloat16>(args, s);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace diffuse::kernels
