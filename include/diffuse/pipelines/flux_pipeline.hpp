#pragma once
// diffusers' FluxPipeline: prompt -> CLIP (pooled) + T5 (sequence) -> Flux transformer over packed
// latents, one call per flow-matching Euler step -> unpack -> VAE decode -> image.
// Each stage is also callable alone (encode_prompt, generate with embeddings and output_type Latent,
// decode_latents), so that big models can run in stages, each stage with only its own components
// loaded (see examples/model_sharding.cpp).
// Placement, as diffusers: device_map = "balanced" spreads whole components over GPUs within max_memory;
// enable_model_cpu_offload / enable_sequential_cpu_offload keep weights on the CPU until they run
// (docs/device_map.md).

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/io/configs.hpp"
#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/t5_encoder.hpp"
#include "diffuse/parallel/context_parallel_config.hpp"
#include "diffuse/pipelines/generate_request.hpp"
#include "diffuse/placement/device_map.hpp"
#include "diffuse/placement/load_model.hpp"
#include "diffuse/placement/memory_size.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"
#include "diffuse/tokenizers/clip_tokenizer.hpp"
#include "diffuse/tokenizers/t5_tokenizer.hpp"

namespace diffuse {

class Communicator;  // diffuse/distributed/communicator.hpp

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
  // "" or "balanced": each component that is loaded goes whole to one GPU of max_memory, sized from
  // its safetensors headers, largest first and dealt so the load is even; a GPU absent from max_memory
  // gets nothing, and what fits on no GPU goes to the CPU (logged). `device` is not used then.
  std::string device_map;
  // Budgets, e.g. {{"cuda:0", "16GB"}, {"cuda:1", "16GB"}}; empty: what the GPUs have available.
  MaxMemory max_memory;
  // The transformer's attention kernel: "auto", "math", "native", "flash", "efficient", "cudnn"
  // (models/attention_backend.hpp).
  std::string attention_backend = "auto";
  // Context parallelism for the transformer (diffusers' parallel_config; docs/context_parallel.md):
  // every rank of `parallel_world` loads the same folder with the same options and makes the same
  // calls. Each computes its shard of every image's tokens; rank 0 gets the images, every rank the
  // latents.
  std::optional<ContextParallelConfig> parallel_config;
  std::shared_ptr<Communicator> parallel_world;  // e.g. Distributed::shared_communicator()
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
  // Moves every loaded model to `device`. A pipeline placed by a device_map must be reset first, and
  // offloading or a component's own device map removed first (remove_all_hooks); else diffuse::Error.
  void to(const std::string& device);

  // ---- context parallelism -----------------------------------------------------------------------
  // Collective over `world` (every rank calls it, with the same config): the transformer's attention
  // is split over the mesh from then on (FluxTransformer2DModel::enable_parallelism). Generation is
  // then collective too: every rank makes the same call; a request with neither seed, generator nor
  // latents uses rank 0's random seed on every rank; only rank 0 decodes (the others return latents).
  void enable_parallelism(const ContextParallelConfig& config, std::shared_ptr<Communicator> world);
  void disable_parallelism();
  // This process's rank in the parallel world (0 without one): rank 0 is the one that gets images.
  int parallel_rank() const;

  // ---- placement ---------------------------------------------------------------------------------
  // Component -> device as device_map="balanced" placed them (diffusers' hf_device_map); empty when
  // the pipeline was not placed so. Prints as JSON (to_json, operator<<).
  const DeviceMap& device_map() const { return device_map_; }
  // Undoes device_map: every component moves to the CPU and the map is cleared.
  void reset_device_map();
  // Each model component moves to `device` (default: the pipeline's GPU, else cuda:0, else the CPU)
  // when it runs and back to the CPU after, so one is on the GPU at a time.
  void enable_model_cpu_offload(const std::string& device = "");
  // Every model stays on the CPU, block by block moved to `device` when the block runs and released
  // after (pinned memory on CUDA): the least GPU memory, the slowest.
  void enable_sequential_cpu_offload(const std::string& device = "");
  // Ends either offload, and takes off hooks a component has from its own device map; weights stay
  // where they are (on the CPU after offloading).
  void remove_all_hooks();
  // Where a component's inputs go: its GPU under model offload, its hooks' execution device, or where
  // its weights are.
  c10::Device execution_device(const std::string& component);

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
  // The checks and reset that both offload modes start with.
  void start_offload(const char* what, const std::string& device);
  // Refuses (diffuse::Error) a request whose largest activations cannot fit the device's memory.
  void check_memory_for(const GenerateRequest& request, int64_t height, int64_t width);
  // A fresh random seed; under context parallelism rank 0's, broadcast to every rank.
  uint64_t shared_random_seed();
  at::Tensor draw_latents(const GenerateRequest& request, int64_t batch, int64_t height, int64_t width);
  at::Tensor denoise(const GenerateRequest& request, const PromptEmbeddings& embeddings, at::Tensor latents,
                     int64_t height, int64_t width, bool& interrupted);

  enum class Offload { None, Model, Sequential };
  // The loaded model components by name, for placement.
  std::vector<std::pair<std::string, torch::nn::Module*>> models();
  std::optional<c10::Device> model_offload_device() const;

  std::filesystem::path folder_;
  c10::ScalarType dtype_ = c10::kFloat;
  c10::Device device_ = c10::kCPU;
  FluxComponents components_;
  AutoencoderKLConfig vae_config_;
  FluxTransformerConfig transformer_config_;
  int64_t vae_scale_factor_ = 8;
  int64_t num_channels_latents_ = 16;
  DeviceMap device_map_;
  std::shared_ptr<Communicator> parallel_world_;
  Offload offload_ = Offload::None;
  c10::Device offload_device_ = c10::kCPU;
};

}  // namespace diffuse
