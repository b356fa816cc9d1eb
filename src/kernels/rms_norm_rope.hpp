#pragma once
// The fused preparation of FLUX's attention inputs on CUDA: per head, RMSNorm (diffusers' RMSNorm:
// mean of squares in float32, normalized values rounded to the weight's dtype, times the weight) and
// then the rotary embedding (a complex product in float32), written straight into a [batch, tokens,
// heads, head_dim] buffer at a token offset, so that text and image tokens land in one joint
// sequence without a concatenation. One warp per (batch, token, head) row; no torch headers here, so
// that nvcc compiles this file alone (src/kernels/rms_norm_rope.cu).

#include <cstdint>

namespace diffuse::kernels {

struct RmsNormRopeArgs {
  const void* x;  // [batch, tokens, heads * head_dim] rows, bfloat16 or float16; channels contiguous
  int64_t x_batch_stride, x_token_stride;  // in elements
  const void* weight;                      // [head_dim], x's dtype
  const void* phasor;                      // [tokens, head_dim / 2] complex64: e^(i angle) per channel pair
  void* out;                               // [batch, tokens, heads, head_dim] view, x's dtype
  int64_t out_batch_stride, out_token_stride;  // in elements; heads are head_dim apart
  int64_t batch, tokens, heads, head_dim;
  float eps;
  bool half;  // float16 (else bfloat16)
};

// head_dim a multiple of 64 up to 256.
bool rms_norm_rope_supports(int64_t head_dim);
// Launches on `stream` (a cudaStream_t). Returns the CUDA error code (0: launched).
int rms_norm_rope(const RmsNormRopeArgs& args, void* stream);

}  // namespace diffuse::kernels
