#pragma once
// What a pipeline call takes and returns, for every family. Field names follow diffusers' pipelines'
// __call__ arguments; a field that only some families read says which.

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/io/image.hpp"

namespace diffuse {

// One prompt or several: `.prompt = "a cat"` and `.prompt = {"a cat", "a dog"}` both work.
class PromptList {
 public:
  PromptList() = default;
  PromptList(const char* prompt) : items_{prompt} {}
  PromptList(std::string prompt) : items_{std::move(prompt)} {}
  PromptList(std::vector<std::string> prompts) : items_(std::move(prompts)) {}
  PromptList(std::initializer_list<std::string> prompts) : items_(prompts) {}

  const std::vector<std::string>& items() const { return items_; }
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }

 private:
  std::vector<std::string> items_;
};

// The text encoders' outputs, one row per image (prompts repeated num_images_per_prompt times).
struct PromptEmbeddings {
  // FLUX.1: T5's sequence [B, max_sequence_length, joint_attention_dim].
  // SD: CLIP's last_hidden_state [B, 77, cross_attention_dim].
  at::Tensor prompt_embeds;
  // SD under classifier-free guidance, Qwen-Image under true CFG: the negative prompts' (or "")
  // embeddings, as prompt_embeds.
  at::Tensor negative_prompt_embeds;
  // Qwen-Image: [B, L] int64, 1 where a token is valid (prompts differ in length); undefined when every
  // position is valid, as diffusers passes None then.
  at::Tensor prompt_embeds_mask;
  at::Tensor negative_prompt_embeds_mask;
  at::Tensor pooled_prompt_embeds;  // FLUX.1: CLIP pooled [B, pooled_projection_dim]
  at::Tensor text_ids;              // FLUX.1: zeros [max_sequence_length, 3]
};

struct EncodeRequest {
  PromptList prompt;    // to CLIP
  PromptList prompt_2;  // FLUX.1: to T5; empty means the same as prompt
  // SD: the negative prompts, one per prompt or one for all; empty means "" (encoded only under
  // classifier-free guidance).
  PromptList negative_prompt;
  bool do_classifier_free_guidance = false;  // SD, Qwen-Image: also encode the negative prompts
  int64_t num_images_per_prompt = 1;
  // FLUX.1: T5 tokens (at most 512); Qwen-Image: text tokens after the template (at most 1024).
  int64_t max_sequence_length = 512;
};

enum class OutputType {
  Image,   // RGB8 images (and the [0, 1] tensor they came from)
  Latent,  // the final packed latents only; the VAE does not run
  Tensor,  // the [B, 3, H, W] tensor in [0, 1], as diffusers' output_type="pt"
};
// "image" / "pil" / "np", "latent", "tensor" / "pt".
OutputType parse_output_type(std::string_view name);

struct StepInfo {
  int64_t step;           // 0-based
  int64_t num_steps;
  double timestep;        // in [0, num_train_timesteps]
  const at::Tensor& latents;  // after this step
};
// Called after every denoising step; returning false stops the loop (the output then holds the
// latents reached so far and `interrupted` is set).
using StepCallback = std::function<bool(const StepInfo&)>;

struct GenerateRequest {
  PromptList prompt;
  PromptList prompt_2;  // FLUX.1: to T5; empty means the same as prompt
  // SD: what the image should not show (classifier-free guidance's unconditional half); one per prompt
  // or one for all; empty means "". Qwen-Image: the same for true CFG, which runs only when one is
  // given (empty means none; "" is a negative prompt).
  PromptList negative_prompt;
  // Instead of prompts: embeddings from encode_prompt. FLUX.1 needs prompt_embeds and
  // pooled_prompt_embeds; SD prompt_embeds, and negative_prompt_embeds under guidance (else "" is encoded);
  // Qwen-Image prompt_embeds with prompt_embeds_mask where rows are padded (and the negative pair).
  at::Tensor prompt_embeds;
  at::Tensor pooled_prompt_embeds;
  at::Tensor negative_prompt_embeds;
  at::Tensor prompt_embeds_mask;           // Qwen-Image: [B, L] int64, 1 = valid; undefined: all valid
  at::Tensor negative_prompt_embeds_mask;  // Qwen-Image
  int64_t num_images_per_prompt = 1;
  // Default: the family's (1024 for FLUX.1, 512 for SD 1.5: unet sample_size * vae_scale_factor).
  // Each must be a multiple of the family's factor (16 for FLUX.1, 8 for SD), unless round_size is set:
  // then it is rounded down as diffusers does, with a warning.
  std::optional<int64_t> height;
  std::optional<int64_t> width;
  bool round_size = false;
  // Default: the family's (28 for FLUX.1, 50 for SD).
  std::optional<int64_t> num_inference_steps;
  // The family's guidance scale (default 3.5 for FLUX.1's distilled guidance, 7.5 for SD's
  // classifier-free guidance, which runs when it is above 1; Qwen-Image: only for guidance-distilled
  // transformers).
  std::optional<double> guidance_scale;
  // Qwen-Image's true CFG: neg + scale * (cond - neg), rescaled to the conditional prediction's norm,
  // from two transformer calls per step; runs when above 1 and a negative prompt is given. Default 4.
  std::optional<double> true_cfg_scale;
  std::optional<std::vector<double>> sigmas;  // FLUX.1: custom schedule; default linspace(1, 1/steps, steps)
  // Initial noise: `latents` if given (as diffusers' `latents=` takes them: packed [B, S, C*4] for
  // FLUX.1, [B, 4, H/8, W/8] for SD), else drawn from `generator`, else from a CPU generator seeded
  // with `seed`, else from a random seed. Same seed, same latents as diffusers. Schedulers that draw
  // noise at each step (Euler ancestral) draw it from the same generator.
  std::optional<uint64_t> seed;
  std::optional<at::Generator> generator;
  at::Tensor latents;
  // FLUX.1: T5 tokens (at most 512); Qwen-Image: text tokens after the template (at most 1024).
  int64_t max_sequence_length = 512;
  OutputType output_type = OutputType::Image;
  StepCallback callback;
  std::optional<bool> progress;  // a progress bar on stderr; default: when stderr is a terminal
};

struct StageTimes {
  double encode_seconds = 0;
  double denoise_seconds = 0;
  double decode_seconds = 0;
  double total_seconds = 0;
};

struct GenerateOutput {
  std::vector<Image> images;  // OutputType::Image
  at::Tensor image_tensor;    // [B, 3, H, W] float32 in [0, 1] (Image and Tensor)
  at::Tensor latents;         // the final latents as the family keeps them (packed for FLUX.1), always
  int64_t height = 0;         // of the images
  int64_t width = 0;
  StageTimes times;
  bool interrupted = false;   // a callback stopped the loop
};

// What a loaded pipeline's calls look like, for programs and the C API.
struct PipelineInfo {
  std::string class_name;          // "FluxPipeline", "StableDiffusionPipeline", "QwenImagePipeline"
  int64_t vae_scale_factor = 8;
  int64_t size_multiple = 8;       // height and width must be multiples of it
  int64_t default_height = 512;
  int64_t default_width = 512;
  int64_t default_steps = 50;
  // The family's guidance scale's default: FLUX.1's distilled guidance (3.5), SD's classifier-free
  // guidance (7.5); Qwen-Image, whose transformer takes no guidance_scale: its true_cfg_scale's (4).
  double default_guidance_scale = 7.5;
  int64_t num_channels_latents = 4;
  bool packed_latents = false;     // FLUX.1 packs 2x2 patches into tokens

  // The negative prompt, so that a program that stages a call (encode_prompt, then generate with the
  // embeddings; pipelines/staged_call.hpp) encodes negative prompts exactly when generate would.
  // Negative-prompt guidance runs when its scale is above 1 and, unless empty_negative_prompt, a
  // negative prompt is given.
  bool uses_negative_prompt = false;   // SD and Qwen-Image read negative_prompt; FLUX.1 refuses one
  // With none given, "" is encoded as the negative prompt: SD's classifier-free guidance. False where
  // guidance runs only when a negative prompt is given (Qwen-Image's true CFG: it must then get no
  // negative embeddings at all).
  bool empty_negative_prompt = false;
  // The scale of negative-prompt guidance is true_cfg_scale (Qwen-Image), else guidance_scale (SD).
  bool true_cfg = false;
  double default_true_cfg_scale = 1;   // Qwen-Image: 4

  std::string scheduler;           // the scheduler's class name ("" when not loaded)
};

}  // namespace diffuse
