#pragma once
// diffusers' FluxPipeline: prompt -> CLIP (pooled) + T5 (sequence) -> Flux transformer over packed
// latents, one call per flow-matching Euler step -> unpack -> VAE decode -> image.
// Each stage is also callable alone (encode_prompt, generate with embeddings and output_type Latent,
// decode_latents), so that big models can run in stages, each stage with only its own components
// loaded (see examples/model_sharding.cpp).

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/io/configs.hpp"
#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/t5_encoder.hpp"
#include "diffuse/pipelines/generate_request.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"
#include "diffuse/tokenizers/clip_tokenizer.hpp"
#include "diffuse/tokenizers/t5_tokenizer.hpp"

namespace diffuse {

// The pipeline's parts under model_index.json's names. An empty one is absent (skipped, released or
// not loaded yet).
struct FluxComponents {
  std::optional<FlowMatchEulerDiscreteScheduler> scheduler;
  std::optional<ClipTokenizer> tokenizer;
  std::optional<T5Tokenizer> tokenizer_2;
  ClipTextModel text_encoder{nullptr};
  T5EncoderModel text_encoder_2{nullptr};
  FluxTransformer2DModel transformer{nullptr};
  AutoencoderKL vae{nullptr};
};

struct FluxPipelineOptions {
  c10::ScalarType dtype = c10::kFloat;  // of the models' weights and compute
  std::string device = "cpu";           // "cpu", "cuda", "cuda:1"
  // Component names not to load, e.g. {"transformer", "vae"} for text encoding alone.
  std::vector<std::string> skip;
  // Components already loaded; they are used as they are, and not read from the folder.
  FluxComponents components;
};

class FluxPipeline {
 public:
  // Reads model_index.json (an unknown class is an error naming it), then each component that is not
  // skipped or given, from its subfolder.
  static FluxPipeline from_pretrained(const std::filesystem::path& folder, FluxPipelineOptions options = {});

  // prompt -> embeddings (needs the tokenizers and both text encoders).
  PromptEmbeddings encode_prompt(const EncodeRequest& request);
  // The whole call, or the stages that the request leaves: prompts or embeddings in; images, a
  // tensor or latents out. Bad requests throw diffuse::Error before any model runs.
  GenerateOutput generate(const GenerateRequest& request);
  // Packed latents [B, S, C*4] of an image of height x width -> [B, 3, height, width] in [0, 1].
  at::Tensor decode_latents(const at::Tensor& latents, int64_t height, int64_t width);

  // Drops a component (by model_index name) and frees its memory.
  void release(const std::string& component);
  bool has(const std::string& component) const;
  // Moves every loaded model to `device`.
  void to(const std::string& device);

  FluxComponents& components() { return components_; }
  FlowMatchEulerDiscreteScheduler& scheduler();
  FluxTransformer2DModel& transformer();
  AutoencoderKL& vae();
  ClipTextModel& text_encoder();
  T5EncoderModel& text_encoder_2();

  const std::filesystem::path& folder() const { return folder_; }
  c10::ScalarType dtype() const { return dtype_; }
  // 2 ** (len(vae.block_out_channels) - 1); 8 for FLUX.1. Read from vae/config.json, so it is known
  // when the VAE itself is skipped.
  int64_t vae_scale_factor() const { return vae_scale_factor_; }
  // The transformer's in_channels / 4 (16 for FLUX.1), from transformer/config.json.
  int64_t num_channels_latents() const { return num_channels_latents_; }
  static constexpr int64_t default_sample_size = 128;

 private:
  at::Tensor draw_latents(const GenerateRequest& request, int64_t batch, int64_t height, int64_t width);
  at::Tensor denoise(const GenerateRequest& request, const PromptEmbeddings& embeddings, at::Tensor latents,
                     int64_t height, int64_t width, bool& interrupted);

  std::filesystem::path folder_;
  c10::ScalarType dtype_ = c10::kFloat;
  c10::Device device_ = c10::kCPU;
  FluxComponents components_;
  AutoencoderKLConfig vae_config_;
  FluxTransformerConfig transformer_config_;
  int64_t vae_scale_factor_ = 8;
  int64_t num_channels_latents_ = 16;
};

}  // namespace diffuse
