#pragma once
// What a FluxPipeline call takes and returns. Field names follow diffusers' FluxPipeline.__call__.

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
  at::Tensor prompt_embeds;         // T5 sequence [B, max_sequence_length, joint_attention_dim]
  at::Tensor pooled_prompt_embeds;  // CLIP pooled [B, pooled_projection_dim]
  at::Tensor text_ids;              // zeros [max_sequence_length, 3]
};

struct EncodeRequest {
  PromptList prompt;    // to CLIP
  PromptList prompt_2;  // to T5; empty means the same as prompt
  int64_t num_images_per_prompt = 1;
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
  PromptList prompt_2;  // to T5; empty means the same as prompt
  // Instead of prompts: embeddings from encode_prompt (both, or neither).
  at::Tensor prompt_embeds;
  at::Tensor pooled_prompt_embeds;
  int64_t num_images_per_prompt = 1;
  // Default: 128 * vae_scale_factor (1024 for FLUX.1). Each must be a multiple of
  // vae_scale_factor * 2 (16), unless round_size is set: then it is rounded down as diffusers does,
  // with a warning.
  std::optional<int64_t> height;
  std::optional<int64_t> width;
  bool round_size = false;
  int64_t num_inference_steps = 28;
  double guidance_scale = 3.5;
  std::optional<std::vector<double>> sigmas;  // custom schedule; default linspace(1, 1/steps, steps)
  // Initial noise: `latents` if given (packed [B, S, C*4]), else drawn from `generator`, else from
  // a CPU generator seeded with `seed`, else from a random seed. Same seed, same latents as diffusers.
  std::optional<uint64_t> seed;
  std::optional<at::Generator> generator;
  at::Tensor latents;
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
  at::Tensor latents;         // final packed latents [B, S, C*4], always
  int64_t height = 0;         // of the images
  int64_t width = 0;
  StageTimes times;
  bool interrupted = false;   // a callback stopped the loop
};

}  // namespace diffuse
