#pragma once
// FLUX attention's q and k preparation (RMSNorm per head, then the rotary embedding) as one CUDA
// kernel writing into the joint [batch, tokens, heads, head_dim] buffer (src/kernels/rms_norm_rope.cu).
// Elsewhere the blocks compose the same steps from ATen operations.

#include <ATen/core/Tensor.h>

#include "diffuse/models/layers.hpp"

namespace diffuse {

// Whether the kernel was built (CUDA builds) and runs `x` [batch, tokens, heads * head_dim]: on CUDA,
// bfloat16 or float16, channels contiguous, head_dim a multiple of 64 up to 256. Tokens may lie at any
// stride: a column slice of a fused q/k/v product ([batch, tokens, 3 * inner]) is read in place.
bool fused_qk_norm_rope_available(const at::Tensor& x, int64_t head_dim);

// out[:, out_offset : out_offset + tokens] = rotate(norm(x per head), phasor): `out` is
// [batch, total_tokens, heads, head_dim] with heads and channels contiguous, `phasor` the complex64
// rotary rows [tokens, head_dim / 2] of x's tokens, `norm` an RMSNorm with a weight in x's dtype.
void fused_qk_norm_rope(const at::Tensor& x, const RMSNormImpl& norm, const at::Tensor& phasor, const at::Tensor& out,
                        int64_t out_offset);

}  // namespace diffuse
