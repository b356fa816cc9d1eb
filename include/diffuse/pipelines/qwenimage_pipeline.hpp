#pragma once
// diffusers' QwenImagePipeline: each prompt inside Qwen-Image's chat template -> Qwen2.5-VL's last
// hidden state (the template's first positions dropped, padding kept out by a mask) -> the Qwen-Image
// MMDiT over packed 2x2 latent patches, one call per flow-match step, and with a negative prompt a
// second call combined by true CFG (rescaled to the conditional prediction's norm) -> the causal-3D
// VAE on one frame -> image.
//
//   auto qwen = QwenImagePipeline::from_pretrained("Qwen-Image", {.dtype = at::kBFloat16, .device = "cuda"});
//   auto out = qwen.generate({.prompt = "a coffee shop sign that reads \"diffuse\"",
//                             .negative_prompt = " ", .true_cfg_scale = 4.0,
//                             .height = 1328, .width = 1328, .num_inference_steps = 50, .seed = 0});
//
// As diffusers: true CFG runs only with a negative prompt (or negative embeddings) and a scale above 1;
// the default size is 128 * vae_scale_factor (1024 for Qwen-Image); max_sequence_length (at most 1024)
// cuts the prompt embeddings after the template is dropped. Each stage is also callable alone:
// encode_prompt, generate with prompt_embeds (and their masks) or output_type Latent, decode_latents.

#include <filesystem>
#include <memory>

#include "diffuse/models/autoencoder_kl_qwenimage.hpp"
#include "diffuse/models/qwen2_5_vl_text.hpp"
#include "diffuse/models/qwenimage_transformer.hpp"
#include "diffuse/parallel/context_parallel_config.hpp"
#include "diffuse/pipelines/diffusion_pipeline.hpp"
#include "diffuse/pipelines/generate_request.hpp"

namespace diffuse {

class QwenImagePipeline : public DiffusionPipeline {
 public:
  // Components, classes and offload order, as diffusers' QwenImagePipeline declares them.
  static const PipelineSpec& pipeline_spec();

  static QwenImagePipeline from_pretrained(const std::filesystem::path& folder, PipelineOptions options = {});

  // The chat template each prompt is written into, and how many of its leading tokens are dropped from
  // the encoder's output (the system part): diffusers' prompt_template_encode(_start_idx).
  static const std::string& prompt_template();
  static constexpr int64_t prompt_template_start_index = 34;
  static constexpr int64_t max_sequence_length_limit = 1024;

  // prompts (and, with do_classifier_free_guidance, the negative prompts) -> prompt_embeds
  // [B * num_images_per_prompt, L, hidden] with prompt_embeds_mask [B * n, L] (int64, 1 = valid), L the
  // longest prompt's token count (at most max_sequence_length); the mask is undefined where every
  // position is valid, as diffusers passes None then. Needs the tokenizer and text_encoder.
  PromptEmbeddings encode_prompt(const EncodeRequest& request) override;
  GenerateOutput generate(const GenerateRequest& request) override;
  // Packed latents [B, (h/2)*(w/2), C*4] of a height x width image -> images [B, 3, height, width] in
  // [0, 1]: unpacked to one frame, denormalized with the VAE's latents_mean / latents_std, decoded.
  at::Tensor decode_latents(const at::Tensor& latents, int64_t height, int64_t width) override;
  PipelineInfo info() const override;

  // Parallelism (DiffusionPipeline::enable_parallelism): every rank of the world loads the same
  // pipeline and makes the same call. Context parallelism splits the transformer's image and text
  // tokens (and the text mask) over each cfg half (QwenImageTransformer2DModel::enable_parallelism).
  // cfg_degree 2 runs the two true-CFG calls on the two halves, the negative one on cfg index 0, each
  // with its own text length and mask, and exchanges the predictions once per step; a call without
  // true CFG falls back (logged) to the positive call on both halves. Rank 0 alone decodes the image.

  // The models; each throws diffuse::Error when the component is not loaded.
  QwenImageTransformer2DModel transformer() const;
  AutoencoderKLQwenImage vae() const;
  Qwen2_5_VLTextModel text_encoder() const;

  // 2 ** len(vae.temperal_downsample): 8 for Qwen-Image. From vae/config.json, also when the VAE is skipped.
  int64_t vae_scale_factor() const { return vae_scale_factor_; }
  // The transformer's in_channels / 4 (16 for Qwen-Image).
  int64_t num_channels_latents() const { return num_channels_latents_; }
  static constexpr int64_t default_sample_size = 128;

 private:
  QwenImagePipeline() : DiffusionPipeline(pipeline_spec()) {}
  // One list of prompts -> [B, L, hidden] and its mask (before num_images_per_prompt and the cut).
  std::pair<at::Tensor, at::Tensor> encode_texts(const std::vector<std::string>& prompts);
  // Refuses (diffuse::Error) a request whose largest activations cannot fit the device's memory.
  void check_memory_for(const GenerateRequest& request, int64_t rows, int64_t height, int64_t width);
  at::Tensor denoise(const GenerateRequest& request, const PromptEmbeddings& embeddings, at::Tensor latents,
                     int64_t height, int64_t width, double true_cfg_scale, const at::Generator& generator,
                     const std::shared_ptr<Communicator>& cfg_group, bool& interrupted);

  AutoencoderKLQwenImageConfig vae_config_;
  QwenImageTransformerConfig transformer_config_;
  int64_t vae_scale_factor_ = 8;
  int64_t num_channels_latents_ = 16;

  void check_parallel_config(const ParallelConfig& config) const override;
  void enable_context_parallelism(const ContextParallelConfig& config, std::shared_ptr<Communicator> group) override;
  void disable_context_parallelism() override;
};

}  // namespace diffuse
