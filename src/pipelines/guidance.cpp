#include "diffuse/pipelines/guidance.hpp"

#include <ATen/ATen.h>

#include "diffuse/error.hpp"

namespace diffuse {

at::Tensor ClassifierFreeGuidance::batch(const at::Tensor& x) const { return enabled() ? at::cat({x, x}) : x; }

at::Tensor ClassifierFreeGuidance::batch(const at::Tensor& unconditional, const at::Tensor& conditional) const {
  if (!enabled()) return conditional;
  if (unconditional.sizes() != conditional.sizes())
    throw Error("classifier-free guidance: the unconditional input has shape " + c10::str(unconditional.sizes()) +
                " but the conditional one " + c10::str(conditional.sizes()));
  return at::cat({unconditional, conditional.to(unconditional.device())});
}

at::Tensor ClassifierFreeGuidance::combine(const at::Tensor& prediction) const {
  if (!enabled()) return prediction;
  if (prediction.size(0) % 2 != 0)
    throw Error("classifier-free guidance: the prediction's batch " + std::to_string(prediction.size(0)) +
                " is not [unconditional; conditional]");
  const auto halves = prediction.chunk(2);
  return classifier_free_guidance(halves[0], halves[1], scale);
}

at::Tensor classifier_free_guidance(const at::Tensor& unconditional, const at::Tensor& conditional, double scale) {
  return unconditional + scale * (conditional - unconditional);
}

at::Tensor true_classifier_free_guidance(const at::Tensor& unconditional, const at::Tensor& conditional, double scale) {
  const at::Tensor combined = classifier_free_guidance(unconditional, conditional, scale);
  const at::Tensor cond_norm = at::linalg_vector_norm(conditional, 2, {-1}, /*keepdim=*/true);
  const at::Tensor combined_norm = at::linalg_vector_norm(combined, 2, {-1}, /*keepdim=*/true);
  return combined * (cond_norm / combined_norm);
}

}  // namespace diffuse
