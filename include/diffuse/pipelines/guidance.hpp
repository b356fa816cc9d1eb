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

#include <ATen/core/Tensor.h>

namespace diffuse {

struct ClassifierFreeGuidance {
  double scale = 1.0;

  // diffusers' do_classifier_free_guidance: a scale above 1.
  bool enabled() const { return scale > 1.0; }
  // The denoiser's input batch: [x; x] when enabled, x otherwise.
  at::Tensor batch(const at::Tensor& x) const;
  // [unconditional; conditional] (the text condition, say) when enabled, `conditional` otherwise.
  at::Tensor batch(const at::Tensor& unconditional, const at::Tensor& conditional) const;
  // The denoiser's [2B, ...] output -> uncond + scale * (cond - uncond); the output itself when disabled.
  at::Tensor combine(const at::Tensor& prediction) const;
};

// uncond + scale * (cond - uncond), computed as diffusers writes it.
at::Tensor classifier_free_guidance(const at::Tensor& unconditional, const at::Tensor& conditional, double scale);

// True CFG (QwenImagePipeline): classifier_free_guidance, then each row rescaled so that its norm over
// the last dimension equals the conditional prediction's.
at::Tensor true_classifier_free_guidance(const at::Tensor& unconditional, const at::Tensor& conditional, double scale);

}  // namespace diffuse
