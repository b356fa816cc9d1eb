#include "diffuse/models/attention.hpp"

#include <torch/version.h>

#include <cmath>

namespace diffuse {

at::Tensor math_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const AttentionOptions& options) {
  const double scale = options.scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)).to(at::kFloat) * scale;
  if (options.is_causal) {
    const int64_t q_len = q.size(-2), k_len = k.size(-2);
    at::Tensor keep = at::ones({q_len, k_len}, scores.options().dtype(at::kBool)).tril(k_len - q_len);
    scores = scores.masked_fill(keep.logical_not(), -std::numeric_limits<float>::infinity());
  }
  if (options.mask) {
    const at::Tensor& mask = *options.mask;
    if (mask.scalar_type() == at::kBool)
      scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
    else
      scores = scores + mask.to(at::kFloat);
  }
  at::Tensor probabilities = at::softmax(scores, -1).to(v.scalar_type());
  return at::matmul(probabilities, v);
}

at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const AttentionOptions& options) {
#if TORCH_VERSION_MAJOR >= 2
  // Only fused where results match the math path's semantics: on CUDA, masks in the query dtype.
  if (q.is_cuda()) {
    std::optional<at::Tensor> mask = options.mask;
    if (mask && mask->scalar_type() != at::kBool) mask = mask->to(q.scalar_type());
    return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, options.is_causal, options.scale);
  }
#endif
  return math_attention(q, k, v, options);
}

}  // namespace diffuse
