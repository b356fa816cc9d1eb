#pragma once
// Scaled dot-product attention, the one place every model's attention goes through, so that faster
// kernels (and, later, context-parallel dispatch) plug in without touching the models.

#include <ATen/ATen.h>

#include <optional>

namespace diffuse {

struct AttentionOptions {
  // Added to the scores before softmax (float, broadcastable to [batch, heads, q_len, k_len]); or a
  // bool mask where true means "attend".
  std::optional<at::Tensor> mask;
  bool is_causal = false;
  // Multiplies q·k; default 1/sqrt(head_dim).
  std::optional<double> scale;
};

// q: [batch, heads, q_len, head_dim], k and v: [batch, heads, k_len, head_dim] -> [batch, heads, q_len, head_dim].
// With libtorch 2.x this is at::scaled_dot_product_attention (fused kernels where they apply);
// otherwise the math path, with softmax in float32.
at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const AttentionOptions& options = {});

// The math path alone (portable; also the reference the fused paths are tested against).
at::Tensor math_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const AttentionOptions& options = {});

}  // namespace diffuse
