#pragma once
// Conversions between the half-precision storage types and float32 for our CUDA kernels, and a pack of
// consecutive values loaded and stored as one access. nvcc only.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace diffuse::kernels {

__device__ inline float to_float(__half v) { return __half2float(v); }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ inline T from_float(float v);
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// What storing a float in T and reading it back gives (PyTorch rounds after each operation).
template <typename T>
__device__ inline float round_to(float v) { return to_float(from_float<T>(v)); }

// VEC consecutive values of T, aligned so that one load or store moves them all.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

}  // namespace diffuse::kernels
