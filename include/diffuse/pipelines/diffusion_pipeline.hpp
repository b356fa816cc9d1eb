#pragma once
// diffusers' DiffusionPipeline in C++: the base of every family (FluxPipeline, StableDiffusionPipeline,
// ...). It owns the components by their model_index.json names and implements, once, what does not
// depend on the family: loading the components a family declares, moving them (`to`), placing whole
// components over GPUs (device_map "balanced" within max_memory), model and sequential CPU offload,
// releasing components, and swapping the scheduler by class name. A family adds its call (`generate`),
// its stages (`encode_prompt`, `decode_latents`) and its typed accessors.
//
//   auto pipe = load_pipeline("stable-diffusion-v1-5", {.dtype = at::kHalf, .device = "cuda"});
//   pipe->set_scheduler("DPMSolverMultistepScheduler");   // as X.from_config(pipe.scheduler.config)
//   auto out = pipe->generate({.prompt = "a dog", .negative_prompt = "blurry", .guidance_scale = 7.5});
//   out.images[0].save_png("dog.png");
//
// docs/architecture.md shows how a family plugs in; docs/device_map.md the placement.

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/io/configs.hpp"
#include "diffuse/parallel/parallel_config.hpp"
#include "diffuse/pipelines/components.hpp"
#include "diffuse/pipelines/generate_request.hpp"
#include "diffuse/placement/device_map.hpp"
#include "diffuse/placement/memory_size.hpp"
#include "diffuse/schedulers/scheduler.hpp"

namespace diffuse {

class Communicator;  // diffuse/distributed/communicator.hpp
class ParallelMesh;  // diffuse/parallel/parallel_mesh.hpp
class OffloadedTensors;  // diffuse/placement/offloaded_tensors.hpp

struct PipelineOptions {
  c10::ScalarType dtype = c10::kFloat;  // of the models' weights and compute
  std::string device = "cpu";           // "cpu", "cuda", "cuda:1"
  // Component names not to load, e.g. {"transformer", "vae"} for text encoding alone.
  std::vector<std::string> skip;
  // Components already loaded, by name; they are used as they are, and not read from the folder.
  ComponentMap components;
  // "" or "balanced": each model component that is loaded goes whole to one GPU of max_memory, sized
  // from its safetensors headers, largest first and dealt so the load is even; a GPU absent from
  // max_memory gets nothing, and what fits on no GPU goes to the CPU (logged). `device` is not used then.
  std::string device_map;
  // Budgets, e.g. {{"cuda:0", "16GB"}, {"cuda:1", "16GB"}}; empty: what the GPUs have available.
  MaxMemory max_memory;
  // The attention kernel of the denoiser: "auto", "math", "native", "flash", "efficient", "cudnn"
  // (models/attention_backend.hpp).
  std::string attention_backend = "auto";
  // Replay each denoiser call from a CUDA graph (models/graph_call.hpp) when the denoiser runs
  // wholly on one GPU without per-block hooks (not under sequential offload or its own device map):
  // what torch.compile's mode="reduce-overhead" gives diffusers, without compiling. Off: every call is
  // launched kernel by kernel, as before. The images are the same either way.
  bool cuda_graphs = true;
  // Parallelism for the denoiser (diffusers' parallel_config; docs/context_parallel.md): CFG
  // parallelism (cfg_degree 2: FLUX.1 refuses it) and context parallelism (ring/Ulysses: SD refuses
  // it), as DiffusionPipeline::enable_parallelism. Every rank of `parallel_world` loads the same folder
  // with the same options and makes the same calls; rank 0 gets the images, every rank the latents. A
  // ContextParallelConfig may be assigned (cfg_degree 1).
  std::optional<ParallelConfig> parallel_config;
  std::shared_ptr<Communicator> parallel_world;  // e.g. Distributed::shared_communicator()
};

// What a family declares: its class name, the components it runs with the classes it accepts, and the
// order its models run in (diffusers' model_cpu_offload_seq).
struct PipelineSpec {
  struct ComponentSpec {
    std::string name;                  // "unet"
    std::vector<std::string> classes;  // accepted _class_name values, the first is the one diffusers writes
  };
  std::string class_name;                           // "StableDiffusionPipeline"
  std::vector<ComponentSpec> components;            // every one must be in model_index.json
  std::vector<std::string> model_cpu_offload_seq;   // model components, in the order a call runs them
  // Which tokenizer feeds which text encoder ({"tokenizer", "text_encoder"}): checked at load, so that
  // a tokenizer with more ids than its encoder's vocabulary is an error naming both.
  std::vector<std::pair<std::string, std::string>> tokenizer_encoders;
};

class DiffusionPipeline {
 public:
  virtual ~DiffusionPipeline() = default;
  DiffusionPipeline(DiffusionPipeline&&) = default;
  DiffusionPipeline& operator=(DiffusionPipeline&&) = default;

  // Reads model_index.json's `_class_name` and builds the registered family (pipeline_registry.hpp):
  // the same as load_pipeline(folder, options).
  static std::unique_ptr<DiffusionPipeline> from_pretrained(const std::filesystem::path& folder,
                                                            PipelineOptions options = {});

  // ---- the family's part ---------------------------------------------------------------------------
  const PipelineSpec& spec() const { return spec_; }
  const std::string& class_name() const { return spec_.class_name; }
  // The whole call, or the stages the request leaves (docs/pipeline.md). Bad requests throw
  // diffuse::Error before any model runs.
  virtual GenerateOutput generate(const GenerateRequest& request) = 0;
  // The stages alone, so that a call can run with only one stage's components loaded (each stage in
  // its own process or at its own time; pipelines/staged_call.hpp, examples/model_sharding.cpp):
  //   prompts -> embeddings, with the text components (tokenizer*, text_encoder*) alone. The negative
  //   prompts are encoded when request.do_classifier_free_guidance is set (PipelineInfo says when the
  //   family's generate would).
  virtual PromptEmbeddings encode_prompt(const EncodeRequest& request) = 0;
  //   generate's final latents (output_type Latent) of height x width images -> [B, 3, height, width]
  //   in [0, 1], with the VAE alone. Latents that do not belong to that size are an error.
  virtual at::Tensor decode_latents(const at::Tensor& latents, int64_t height, int64_t width) = 0;
  // What the family's images and latents look like, for programs and the C API.
  virtual PipelineInfo info() const = 0;

  // ---- parallelism (docs/context_parallel.md) --------------------------------------------------------
  // Collective over `world` (every rank loads the same pipeline, calls this with the same config, and
  // then makes the same calls): builds the cfg x ring x Ulysses mesh (parallel/parallel_mesh.hpp).
  // With cfg_degree 2 the unconditional and the conditional pass of each guided step run on the two
  // halves and are exchanged once per step; with ring or Ulysses above 1 the family's transformer
  // splits its tokens over its half. Every rank ends each step with the same latents; rank 0 decodes.
  // What the family cannot split, and degrees that do not fit the world, are refused with
  // diffuse::Error before anything collective runs. Replaces any parallelism enabled before.
  void enable_parallelism(const ParallelConfig& config, std::shared_ptr<Communicator> world);
  void disable_parallelism();
  // This process's rank in the parallel world (0 without one): rank 0 is the one that gets images.
  int parallel_rank() const;
  // The mesh, or null without parallelism.
  const ParallelMesh* parallel_mesh() const { return parallel_mesh_.get(); }

  // ---- components ------------------------------------------------------------------------------------
  bool has(const std::string& component) const;
  // Drops a component (by model_index name) and frees its memory; a name the family does not have is
  // an error.
  void release(const std::string& component);
  ComponentMap& components() { return components_; }
  const ComponentMap& components() const { return components_; }

  // The scheduler, and swapping it by class name or alias with the current config's keys, as diffusers'
  // `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`.
  Scheduler& scheduler();
  void set_scheduler(const std::string& class_name);
  void set_scheduler(std::shared_ptr<Scheduler> scheduler);

  // ---- placement -------------------------------------------------------------------------------------
  // Moves every loaded model to `device`. A pipeline placed by a device_map must be reset first, and
  // offloading or a component's own device map removed first (remove_all_hooks); else diffuse::Error.
  void to(const std::string& device);
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
  // Where a model component's inputs go: its GPU under model offload, its hooks' execution device, or
  // where its weights are.
  c10::Device execution_device(const std::string& component) const;

  const std::filesystem::path& folder() const { return folder_; }
  c10::ScalarType dtype() const { return dtype_; }
  // The pipeline's device (`options.device`, or where to() moved it).
  c10::Device device() const { return device_; }

 protected:
  explicit DiffusionPipeline(PipelineSpec spec) : spec_(std::move(spec)) {}

  // The generic part of from_pretrained: checks model_index.json against the spec (a missing component
  // or an unsupported class is an error naming both), skips the components the family does not run
  // (one log line each, as diffusers with safety_checker=None), plans device_map "balanced", and loads
  // every component that is neither skipped nor given, through the component registry.
  void load_components(const std::filesystem::path& folder, PipelineOptions& options);
  // A component's folder, checked to exist.
  std::filesystem::path component_folder(const std::string& name) const;

  // A component the call needs: throws diffuse::Error "component 'x' is not loaded, and <why> needs it".
  const Component& require(const std::string& name, const char* why) const;
  template <typename Holder>
  Holder require_model(const std::string& name, const char* why) const {
    return require(name, why).template model<Holder>(name);
  }
  template <typename T>
  T& require_object(const std::string& name, const char* why) const {
    return *require(name, why).template object<T>(name);
  }

  // Under model CPU offload, keeps `component` on the offload device while it lives (else nothing):
  //   { const auto running = on_device_while_running("unet"); ... unet->forward(...) ... }
  // Its weights are copied in from their pinned home copies, asynchronously on the current stream (the
  // kernels that follow wait for them), and on the way out pointed back at those copies: nothing is
  // copied back (diffuse/placement/offloaded_tensors.hpp).
  class OnDevice {
   public:
    explicit OnDevice(OffloadedTensors* weights);
    ~OnDevice();
    OnDevice(const OnDevice&) = delete;
    OnDevice& operator=(const OnDevice&) = delete;

   private:
    OffloadedTensors* weights_;
  };
  OnDevice on_device_while_running(const std::string& component) const;

  // Whether calls of `component` may be replayed from a CUDA graph during one generate call: the
  // option is on, the model runs wholly on one CUDA device with no hooks moving its blocks (model
  // offload is fine: the model stays on the GPU for the whole loop), and its calls hold no
  // collectives (no context parallelism; CFG parallelism exchanges outside the call).
  bool can_capture_cuda_graph(const std::string& component) const;
  // Whether `component` runs wholly on one CUDA device with no hooks moving its weights during a call
  // (no sequential offload, no device map; model offload is fine): where re-laying its weights for
  // speed (FluxTransformer2DModelImpl::fuse_qkv_projections) lasts through the loop.
  bool runs_in_place_on_cuda(const std::string& component) const;

  // The loaded model components in offload order (then any others), for placement.
  std::vector<std::pair<std::string, torch::nn::Module*>> models() const;

  // ---- the family's part of parallelism ----
  // Throws diffuse::Error for a config the family cannot run (called before anything collective). The
  // default refuses every config: a family says what it splits by overriding this and the next two.
  virtual void check_parallel_config(const ParallelConfig& config) const;
  // Splits the denoiser's tokens over `group` (this rank's cfg half, config.ring x config.ulysses
  // ranks); collective over `group`. Called only when the config splits context.
  virtual void enable_context_parallelism(const ContextParallelConfig& config, std::shared_ptr<Communicator> group);
  // Undoes enable_context_parallelism (also called when it was not).
  virtual void disable_context_parallelism() {}
  // from_pretrained's end: enable_parallelism with options.parallel_config, if any.
  void enable_parallelism_from(const PipelineOptions& options);
  // The cfg partners for one call (ParallelMesh::cfg_group), or null: no cfg split for this call.
  // `guided` says whether the request runs an unconditional pass; under cfg_degree 2 a request without
  // one falls back to every rank computing the conditional pass (the same latents, no speedup), with
  // a log line saying so (`why_not` names what is missing, e.g. "guidance_scale 1 is not above 1").
  std::shared_ptr<Communicator> cfg_group_for_call(bool guided, const std::string& why_not) const;
  // Ranks that split the transformer's tokens (1 without context parallelism), for memory estimates.
  int64_t context_parallel_degree() const;

  // The whole parallel world (null without parallelism): the initial noise's seed comes from its rank 0.
  std::shared_ptr<Communicator> parallel_world_;
  std::shared_ptr<const ParallelMesh> parallel_mesh_;

  PipelineSpec spec_;
  std::filesystem::path folder_;
  c10::ScalarType dtype_ = c10::kFloat;
  c10::Device device_ = c10::kCPU;
  ComponentMap components_;
  DeviceMap device_map_;

 private:
  enum class Offload { None, Model, Sequential };
  // The checks and reset that both offload modes start with.
  void start_offload(const char* what, const std::string& device);
  bool is_declared(const std::string& component) const;

  Offload offload_ = Offload::None;
  bool cuda_graphs_ = true;
  c10::Device offload_device_ = c10::kCPU;
  // Under model offload, each model component's weights with their CPU home copies, made (and pinned)
  // by enable_model_cpu_offload; remade by on_device_while_running for a component whose tensors
  // changed since (a replaced component, a parameter registered later).
  mutable std::map<std::string, std::shared_ptr<OffloadedTensors>> offloaded_;
};

}  // namespace diffuse
