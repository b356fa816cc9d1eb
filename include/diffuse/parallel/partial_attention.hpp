#pragma once
// Attention over part of the keys, with the log-sum-exp of each query's scores, and the merge of
// such parts: ring attention attends its queries to one K/V block at a time and folds the blocks
// together, exactly as if it had seen all keys at once.

#include <ATen/core/Tensor.h>

namespace diffuse {

// out: [batch, heads, q_len, head_dim]; lse: [batch, heads, q_len] float32, log(sum(exp(scores))).
struct PartialAttention {
  at::Tensor out;
  at::Tensor lse;
};

// The math path (any device and dtype; scores and softmax in float32).
PartialAttention math_attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         double scale);

// Folds `part` (the same queries over other keys) into `total`. The first call may pass an empty
// `total` (undefined tensors). With `float32_out`, total.out is kept in float32 (diffusers'
// convert_to_fp32); the caller casts once at the end.
void merge_partial_attention(PartialAttention& total, const PartialAttention& part, bool float32_out);

}  // namespace diffuse
