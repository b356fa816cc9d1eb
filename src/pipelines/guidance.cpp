#include "diffuse/pipelines/guidance.hpp"

#include <ATen/ATen.h>

#include "diffuse/distributed/communicator.hpp"
#include "diffuse/error.hpp"

namespace diffuse {

at::Tensor ClassifierFreeGuidance::batch(const at::Tensor& x) const {
  return enabled() && !split() ? at::cat({x, x}) : x;
}

at::Tensor ClassifierFreeGuidance::batch(const at::Tensor& unconditional, const at::Tensor& conditional) const {
  if (!enabled()) return conditional;
  if (split()) return cfg_group->rank() == 0 ? unconditional : conditional;
  if (unconditional.sizes() != conditional.sizes())
    throw Error("classifier-free guidance: the unconditional input has shape " + c10::str(unconditional.sizes()) +
                " but the conditional one " + c10::str(conditional.sizes()));
  return at::cat({unconditional, conditional.to(unconditional.device())});
}

at::Tensor ClassifierFreeGuidance::combine(const at::Tensor& prediction) const {
  if (!enabled()) return prediction;
  if (split()) {
    const auto [unconditional, conditional] = exchange_guidance_halves(*cfg_group, prediction);
    return classifier_free_guidance(unconditional, conditional, scale);
  }
  if (prediction.size(0) % 2 != 0)
    throw Error("classifier-free guidance: the prediction's batch " + std::to_string(prediction.size(0)) +
                " is not [unconditional; conditional]");
  const auto halves = prediction.chunk(2);
  return classifier_free_guidance(halves[0], halves[1], scale);
}

std::pair<at::Tensor, at::Tensor> exchange_guidance_halves(Communicator& cfg_group, const at::Tensor& own) {
  if (cfg_group.size() != 2)
    throw Error("CFG parallelism: the cfg group has " + std::to_string(cfg_group.size()) +
                " members; the unconditional and the conditional pass need 2");
  // Member 0 (cfg index 0) holds the unconditional prediction: the gathered rows come in that order.
  const at::Tensor both = cfg_group.all_gather(own.contiguous(), 0);
  auto halves = both.chunk(2);
  return {halves[0], halves[1]};
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
