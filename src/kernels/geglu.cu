#include "kernels/geglu.hpp"

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/half_convert.cuh"

namespace diffuse::kernels {
namespace {

constexpr int kThreads = 256;

// One thread per VEC outputs of a row; the grid walks rows x packs.
template <typename T, int VEC>
__global__ void geglu_kernel(GegluArgs a) {
  const int64_t packs = a.width / VEC;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= a.rows * packs) return;
  const int64_t row = index / packs, column = (index % packs) * VEC;
  const T* in = static_cast<const T*>(a.x) + row * 2 * a.width + column;
  const Pack<T, VEC> value = *reinterpret_cast<const Pack<T, VEC>*>(in);
  const Pack<T, VEC> gate = *reinterpret_cast<const Pack<T, VEC>*>(in + a.width);
  Pack<T, VEC> y;
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    const float g = to_float(gate.v[i]);
    // PyTorch's exact GELU, in its order of operations, rounded as its output would be.
    const float gelu = to_float(from_float<T>(g * 0.5f * (1.f + erff(g * 0.70710678118654752440f))));
    y.v[i] = from_float<T>(to_float(value.v[i]) * gelu);
  }
  *reinterpret_cast<Pack<T, VEC>*>(static_cast<T*>(a.out) + row * a.width + column) = y;
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T>
void launch(const GegluArgs& a, cudaStream_t stream) {
  const bool wide = a.width % 8 == 0 && aligned(a.x, 16) && aligned(a.out, 16);
  const int vec = wide ? 8 : 2;
  const int64_t threads = a.rows * (a.width / vec);
  const auto blocks = static_cast<unsigned>((threads + kThreads - 1) / kThreads);
  if (wide) geglu_kernel<T, 8><<<blocks, kThreads, 0, stream>>>(a);
  else geglu_kernel<T, 2><<<blocks, kThreads, 0, stream>>>(a);
}

}  // namespace

bool geglu_supports(int64_t width) { return width > 0 && width % 2 == 0; }

int geglu(const GegluArgs& args, void* stream) {
  if (!geglu_supports(args.width) || !aligned(args.x, 4) || !aligned(args.out, 4))
    return static_cast<int>(cudaErrorInvalidValue);
  if (args.rows == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args.half) launch<__half>(args, s);
  else launch<__nv_bfloat16>(args, s);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace diffuse::kernels
