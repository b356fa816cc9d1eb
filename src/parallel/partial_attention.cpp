#include "diffuse/parallel/partial_attention.hpp"

#include <ATen/ATen.h>

namespace diffuse {

PartialAttention math_attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         double scale) {
  at::Tensor scores = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-2, -1)) * scale;
  at::Tensor lse = at::logsumexp(scores, -1);
  at::Tensor probabilities = at::exp(scores - lse.unsqueeze(-1));
  return {at::matmul(probabilities, v.to(at::kFloat)).to(v.scalar_type()), lse};
}

void merge_partial_attention(PartialAttention& total, const PartialAttention& part, bool float32_out) {
  if (!total.out.defined()) {
    total.out = float32_out ? part.out.to(at::kFloat) : part.out;
    total.lse = part.lse.to(at::kFloat);
    return;
  }
  // new_lse = log(exp(a) + exp(b)); each side's output is weighted by exp(its lse - new_lse). A block
  // with no keys (a rank whose shard is empty, or whose keys are all padding) has lse -inf and weight
  // 0; where neither side has seen a key yet both weigh 0 (not exp(-inf + inf)).
  const at::Tensor part_lse = part.lse.to(at::kFloat);
  const at::Tensor merged_lse = at::logaddexp(total.lse, part_lse);
  const at::Tensor reference = at::where(at::isneginf(merged_lse), at::zeros_like(merged_lse), merged_lse);
  const at::Tensor total_weight = at::exp(total.lse - reference).unsqueeze(-1);
  const at::Tensor part_weight = at::exp(part_lse - reference).unsqueeze(-1);
  at::Tensor merged = total.out.to(at::kFloat) * total_weight + part.out.to(at::kFloat) * part_weight;
  total.out = float32_out ? merged : merged.to(total.out.scalar_type());
  total.lse = merged_lse;
}

}  // namespace diffuse
