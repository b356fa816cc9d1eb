#pragma once
// diffusers' StableDiffusionPipeline (SD 1.x and 2.x folders): prompt and negative prompt -> CLIP's
// last_hidden_state -> UNet2DConditionModel over [B, 4, H/8, W/8] latents, one call per scheduler step
// with classifier-free guidance ([negative; positive] as one batch) -> VAE decode -> image.
// The scheduler is whatever scheduler_config.json names (PNDM in the published SD 1.5 folder) and can
// be swapped by name (set_scheduler("DPMSolverMultistepScheduler")). safety_checker and
// feature_extractor are not run (one log line, as diffusers with safety_checker=None).
//
//   auto sd = StableDiffusionPipeline::from_pretrained("stable-diffusion-v1-5",
//                                                      {.dtype = at::kHalf, .device = "cuda"});
//   auto out = sd.generate({.prompt = "a dog", .negative_prompt = "blurry", .guidance_scale = 7.5,
//                           .num_inference_steps = 30, .seed = 0});
//
// Each stage is also callable alone: encode_prompt, generate with prompt_embeds or output_type Latent,
// decode_latents.

#include <filesystem>

#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/unet_2d_condition.hpp"
#include "diffuse/pipelines/diffusion_pipeline.hpp"
#include "diffuse/pipelines/generate_request.hpp"

namespace diffuse {

class StableDiffusionPipeline : public DiffusionPipeline {
 public:
  // Components, classes and offload order, as diffusers' StableDiffusionPipeline declares them.
  static const PipelineSpec& pipeline_spec();

  static StableDiffusionPipeline from_pretrained(const std::filesystem::path& folder, PipelineOptions options = {});

  // prompts (and, under classifier-free guidance, negative prompts or "") -> CLIP's last_hidden_state,
  // each [B * num_images_per_prompt, 77, cross_attention_dim]. Needs the tokenizer and text_encoder.
  PromptEmbeddings encode_prompt(const EncodeRequest& request) override;
  GenerateOutput generate(const GenerateRequest& request) override;
  // Latents [B, 4, h, w] -> images [B, 3, h * 8, w * 8] in [0, 1] (latents / scaling_factor, decoded).
  at::Tensor decode_latents(const at::Tensor& latents);
  // The same, for a call of height x width: the latents must be [B, 4, height / 8, width / 8].
  at::Tensor decode_latents(const at::Tensor& latents, int64_t height, int64_t width) override;
  PipelineInfo info() const override;

  // Parallelism (DiffusionPipeline::enable_parallelism): cfg_degree 2 alone. The rank of cfg index 0
  // runs the UNet on the unconditional batch [B, ...], its partner on the conditional one, instead of
  // one [2B, ...] batch; one exchange per step gives both the two predictions, combined identically.
  // ring/Ulysses degrees above 1 are refused (a UNet has no tokens to split). A call without guidance
  // (guidance_scale <= 1) falls back, logged, to the conditional pass on both ranks. Rank 0 decodes.

  // The models; each throws diffuse::Error when the component is not loaded.
  UNet2DConditionModel unet() const;
  AutoencoderKL vae() const;
  ClipTextModel text_encoder() const;

  // 2 ** (len(vae.block_out_channels) - 1): 8 for SD. From vae/config.json, also when the VAE is skipped.
  int64_t vae_scale_factor() const { return vae_scale_factor_; }
  // The UNet's in_channels (4) and sample_size (64 for SD 1.5: 512x512 images by default).
  int64_t num_channels_latents() const { return unet_config_.in_channels; }

 private:
  StableDiffusionPipeline() : DiffusionPipeline(pipeline_spec()) {}
  // Refuses (diffuse::Error) a request whose largest activations cannot fit the device's memory.
  void check_memory_for(int64_t rows, int64_t height, int64_t width, bool decode);

  AutoencoderKLConfig vae_config_;
  UNet2DConditionConfig unet_config_;
  int64_t vae_scale_factor_ = 8;

  void check_parallel_config(const ParallelConfig& config) const override;
};

}  // namespace diffuse
