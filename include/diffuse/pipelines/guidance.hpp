#pragma once
// Guidance: how a family steers the denoiser toward the prompt by contrasting it with a negative (or
// empty) prompt. One helper for every family:
//  - classifier-free guidance (SD's guidance_scale): the denoiser sees [unconditional; conditional] as
//    one batch, and the halves are combined as uncond + scale * (cond - uncond);
//  - true CFG (Qwen-Image's true_cfg_scale): two separate calls combined the same way, then rescaled to
//    the conditional prediction's norm.
//
//   ClassifierFreeGuidance cfg{request.guidance_scale};
//   at::Tensor input = cfg.batch(latents);                     // [2B, ...] when enabled
//   at::Tensor noise = cfg.combine(unet(input, t, cfg.batch(negative_embeds, prompt_embeds)));
//
// CFG parallelism (ParallelConfig::cfg_degree 2; parallel/parallel_mesh.hpp): the two passes run on two
// halves of the ranks instead of one after the other (or as one 2B batch). The rank of cfg index 0
// computes the unconditional prediction, its partner of cfg index 1 the conditional one; one
// all-gather between the two (exchange_guidance_halves) gives both ranks both predictions, and both
// combine them with the same operations, so their latents stay identical. Give ClassifierFreeGuidance
// the cfg group and the same three calls do that: batch() then returns this rank's half alone.

#include <ATen/core/Tensor.h>

#include <memory>
#include <utility>

namespace diffuse {

class Communicator;  // diffuse/distributed/communicator.hpp

struct ClassifierFreeGuidance {
  double scale = 1.0;
  // The cfg partners (ParallelMesh::cfg_group; member i = cfg index i), or null: both halves here.
  std::shared_ptr<Communicator> cfg_group;

  // diffusers' do_classifier_free_guidance: a scale above 1.
  bool enabled() const { return scale > 1.0; }
  // Guidance with each half on its own rank (enabled, and a cfg group given).
  bool split() const { return enabled() && cfg_group != nullptr; }
  // The denoiser's input batch: [x; x] when enabled, x otherwise (and x when split).
  at::Tensor batch(const at::Tensor& x) const;
  // [unconditional; conditional] (the text condition, say) when enabled, `conditional` otherwise; when
  // split, this rank's half alone: `unconditional` on cfg index 0, `conditional` on cfg index 1.
  at::Tensor batch(const at::Tensor& unconditional, const at::Tensor& conditional) const;
  // The denoiser's [2B, ...] output -> uncond + scale * (cond - uncond); the output itself when disabled.
  // When split, the output is this rank's half [B, ...]: exchanged with the partner first (collective
  // over cfg_group, both ranks call it), then combined.
  at::Tensor combine(const at::Tensor& prediction) const;
};

// CFG parallelism's one exchange: this rank's prediction (the unconditional one on cfg index 0, the
// conditional one on cfg index 1) -> {unconditional, conditional}, the same tensors on both ranks. One
// all-gather over `cfg_group` (2 members); both ranks call it with predictions of one shape.
std::pair<at::Tensor, at::Tensor> exchange_guidance_halves(Communicator& cfg_group, const at::Tensor& own);

// uncond + scale * (cond - uncond), computed as diffusers writes it.
at::Tensor classifier_free_guidance(const at::Tensor& unconditional, const at::Tensor& conditional, double scale);

// True CFG (QwenImagePipeline): classifier_free_guidance, then each row rescaled so that its norm over
// the last dimension equals the conditional prediction's.
at::Tensor true_classifier_free_guidance(const at::Tensor& unconditional, const at::Tensor& conditional, double scale);

}  // namespace diffuse
