#pragma once
// diffusers' FluxPipeline: prompt -> CLIP (pooled) + T5 (sequence) -> Flux transformer over packed
// latents, one call per flow-matching Euler step -> unpack -> VAE decode -> image.
// Each stage is also callable alone (encode_prompt, generate with embeddings and output_type Latent,
// decode_latents), so that big models can run in stages, each stage with only its own components
// loaded (see examples/model_sharding.cpp).
// Loading, placement (device_map "balanced", model and sequential CPU offload) and the components are
// the DiffusionPipeline base's (pipelines/diffusion_pipeline.hpp; docs/device_map.md).

#include <c10/core/ScalarType.h>

#include <filesystem>
#include <memory>
#include <string>

#include "diffuse/io/configs.hpp"
#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/t5_encoder.hpp"
#include "diffuse/parallel/context_parallel_config.hpp"
#include "diffuse/pipelines/diffusion_pipeline.hpp"
#include "diffuse/pipelines/generate_request.hpp"

namespace diffuse {

class Communicator;  // diffuse/distributed/communicator.hpp

// FluxPipeline loads with the base's options; `components` takes loaded models by name, e.g.
// {.components = {{"transformer", transformer}}}.
using FluxPipelineOptions = PipelineOptions;

class FluxPipeline : public DiffusionPipeline {
 public:
  // Components, classes and offload order, as diffusers' FluxPipeline declares them.
  static const PipelineSpec& pipeline_spec();

  // Reads model_index.json (the classes must be FLUX.1's), then each component that is not skipped or
  // given, from its subfolder.
  static FluxPipeline from_pretrained(const std::filesystem::path& folder, FluxPipelineOptions options = {});

  // prompt -> embeddings (needs the tokenizers and both text encoders).
  PromptEmbeddings encode_prompt(const EncodeRequest& request) override;
  // The whole call, or the stages that the request leaves: prompts or embeddings in; images, a
  // tensor or latents out. Bad requests throw diffuse::Error before any model runs.
  GenerateOutput generate(const GenerateRequest& request) override;
  // Packed latents [B, S, C*4] of an image of height x width -> [B, 3, height, width] in [0, 1].
  at::Tensor decode_latents(const at::Tensor& latents, int64_t height, int64_t width) override;
  PipelineInfo info() const override;

  // Parallelism (DiffusionPipeline::enable_parallelism): context parallelism splits the transformer's
  // image and text tokens over the mesh (FluxTransformer2DModel::enable_parallelism). cfg_degree 2 is
  // refused: FLUX.1's guidance is distilled into the model, a call runs no unconditional pass. A
  // request with neither seed, generator nor latents uses rank 0's random seed on every rank; only
  // rank 0 decodes (the others return latents).

  // The models; each throws diffuse::Error when the component is not loaded.
  FluxTransformer2DModel transformer() const;
  AutoencoderKL vae() const;
  ClipTextModel text_encoder() const;
  T5EncoderModel text_encoder_2() const;

  // 2 ** (len(vae.block_out_channels) - 1); 8 for FLUX.1. Read from vae/config.json, so it is known
  // when the VAE itself is skipped.
  int64_t vae_scale_factor() const { return vae_scale_factor_; }
  // The transformer's in_channels / 4 (16 for FLUX.1), from transformer/config.json.
  int64_t num_channels_latents() const { return num_channels_latents_; }
  static constexpr int64_t default_sample_size = 128;

 private:
  FluxPipeline() : DiffusionPipeline(pipeline_spec()) {}
  // Refuses (diffuse::Error) a request whose largest activations cannot fit the device's memory.
  void check_memory_for(const GenerateRequest& request, int64_t height, int64_t width);
  at::Tensor draw_latents(const GenerateRequest& request, int64_t batch, int64_t height, int64_t width,
                          const at::Generator& generator);
  at::Tensor denoise(const GenerateRequest& request, const PromptEmbeddings& embeddings, at::Tensor latents,
                     int64_t height, int64_t width, const at::Generator& generator, bool& interrupted);

  AutoencoderKLConfig vae_config_;
  FluxTransformerConfig transformer_config_;
  int64_t vae_scale_factor_ = 8;
  int64_t num_channels_latents_ = 16;

  void check_parallel_config(const ParallelConfig& config) const override;
  void enable_context_parallelism(const ContextParallelConfig& config, std::shared_ptr<Communicator> group) override;
  void disable_context_parallelism() override;
};

}  // namespace diffuse
