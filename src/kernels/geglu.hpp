#pragma once
// GEGLU's gate on CUDA in one pass: out = a * gelu(b) where [a, b] are the two halves of each row of
// the projection (diffusers' GEGLU, exact erf GELU), with the roundings of the two separate
// operations (gelu(b) rounded to the storage type, then the product rounded). Saves writing and
// reading gelu(b) and one launch. No torch headers here, so that nvcc compiles it alone.

#include <cstdint>

namespace diffuse::kernels {

struct GegluArgs {
  const void* x;  // [rows, 2 * width], rows contiguous; bfloat16 or float16
  void* out;      // [rows, width], contiguous, x's dtype
  int64_t rows, width;
  bool half;  // float16 (else bfloat16)
};

// width a multiple of 2; x and out 4-byte aligned.
bool geglu_supports(int64_t width);
// Launches on `stream` (a cudaStream_t). Returns the CUDA error code (0: launched).
int geglu(const GegluArgs& args, void* stream);

}  // namespace diffuse::kernels
