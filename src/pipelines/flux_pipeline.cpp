#include "diffuse/pipelines/flux_pipeline.hpp"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "diffuse/distributed/communicator.hpp"
#include "diffuse/error.hpp"
#include "diffuse/io/inspect.hpp"
#include "diffuse/models/attention_backend.hpp"
#include "diffuse/pipelines/flux_latents.hpp"
#include "diffuse/pipelines/progress_bar.hpp"
#include "diffuse/placement/device_memory.hpp"
#include "diffuse/placement/dispatch.hpp"
#include "diffuse/placement/model_units.hpp"
#include "diffuse/placement/module_hooks.hpp"
#include "diffuse/placement/planner.hpp"
#include "log.hpp"

namespace diffuse {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The classes this pipeline knows, by model_index.json component.
const std::map<std::string, std::vector<std::string>>& known_classes() {
  static const std::map<std::string, std::vector<std::string>> classes = {
      {"scheduler", {"FlowMatchEulerDiscreteScheduler"}},
      {"text_encoder", {"CLIPTextModel"}},
      {"text_encoder_2", {"T5EncoderModel"}},
      {"tokenizer", {"CLIPTokenizer", "CLIPTokenizerFast"}},
      {"tokenizer_2", {"T5Tokenizer", "T5TokenizerFast"}},
      {"transformer", {"FluxTransformer2DModel"}},
      {"vae", {"AutoencoderKL"}},
  };
  return classes;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Repeats each row `times` times, keeping rows of one prompt together ([p0, p0, p1, p1]), as
// diffusers' repeat + view does.
at::Tensor repeat_rows(const at::Tensor& t, int64_t times) {
  return times == 1 ? t : t.repeat_interleave(times, 0);
}

// Model CPU offload: a component is on its GPU only while this lives (no-op without a device).
class OnDeviceWhileRunning {
 public:
  OnDeviceWhileRunning(torch::nn::Module& model, std::optional<c10::Device> device)
      : model_(device ? &model : nullptr) {
    if (model_) model_->to(*device);
  }
  ~OnDeviceWhileRunning() {
    if (model_) model_->to(c10::kCPU);
  }
  OnDeviceWhileRunning(const OnDeviceWhileRunning&) = delete;
  OnDeviceWhileRunning& operator=(const OnDeviceWhileRunning&) = delete;

 private:
  torch::nn::Module* model_;
};

// The model components, in the order the pipeline runs them.
const std::vector<std::string>& model_component_names() {
  static const std::vector<std::string> names = {"text_encoder", "text_encoder_2", "transformer", "vae"};
  return names;
}

}  // namespace

OutputType parse_output_type(std::string_view name) {
  if (name == "image" || name == "pil" || name == "np") return OutputType::Image;
  if (name == "latent") return OutputType::Latent;
  if (name == "tensor" || name == "pt") return OutputType::Tensor;
  throw Error("unknown output type '" + std::string(name) + "' (expected image, latent or tensor)");
}

FluxPipeline FluxPipeline::from_pretrained(const std::filesystem::path& folder, FluxPipelineOptions options) {
  const auto index_path = folder / "model_index.json";
  if (!std::filesystem::exists(index_path))
    throw Error(folder.string() + ": no model_index.json (not a diffusers pipeline folder)");
  const ModelIndex index = ModelIndex::from_file(index_path);
  if (index.class_name != "FluxPipeline")
    DIFFUSE_LOG_WARN("{}: pipeline class is {}, loading it as FluxPipeline", index_path.string(), index.class_name);

  for (const std::string& name : options.skip)
    if (!known_classes().count(name))
      throw Error("cannot skip '" + name + "': FluxPipeline has no such component");

  FluxPipeline pipe;
  pipe.folder_ = folder;
  pipe.dtype_ = options.dtype;
  pipe.device_ = c10::Device(options.device);
  pipe.components_ = std::move(options.components);
  FluxComponents& c = pipe.components_;

  // Every component this pipeline needs must be named in model_index.json with a class it knows.
  for (const auto& [name, classes] : known_classes()) {
    auto entry = index.components.find(name);
    if (entry == index.components.end())
      throw Error(index_path.string() + ": component '" + name + "' is missing (FluxPipeline needs it)");
    if (!contains(classes, entry->second.class_name))
      throw Error(index_path.string() + ": component '" + name + "' has class " + entry->second.class_name +
                  ", which diffuse does not implement (expected " + classes.front() + ")");
  }

  auto wanted = [&](const std::string& name) { return !contains(options.skip, name); };
  auto subfolder = [&](const std::string& name) {
    const auto path = folder / name;
    if (!std::filesystem::is_directory(path))
      throw Error(folder.string() + ": component folder '" + name + "' is missing");
    return path;
  };

  // Configs are read even for skipped models: latent shapes need them.
  pipe.vae_config_ = AutoencoderKLConfig::from_file(subfolder("vae") / "config.json");
  pipe.transformer_config_ = FluxTransformerConfig::from_file(subfolder("transformer") / "config.json");
  pipe.vae_scale_factor_ = pipe.vae_config_.vae_scale_factor();
  pipe.num_channels_latents_ = pipe.transformer_config_.in_channels / 4;

  const c10::ScalarType dtype = pipe.dtype_;
  if (!options.device_map.empty()) {
    if (options.device_map != "balanced")
      throw Error("FluxPipeline: device_map '" + options.device_map +
                  "' is not supported for a pipeline (supported: \"balanced\"); to spread one model over devices, "
                  "load it with its own device_map (\"auto\", ...) and pass it in `components`");
    // diffusers' balanced map: whole components, sized from their headers (no weight is read).
    std::vector<PlacementUnit> sizes;
    for (const std::string& name : model_component_names()) {
      if (!wanted(name) || pipe.has(name)) continue;
      std::vector<std::string> keep_in_float32;
      if (name == "text_encoder_2" && dtype == c10::kHalf) keep_in_float32 = {"wo"};
      const Checkpoint checkpoint = Checkpoint::open(subfolder(name));
      sizes.push_back({name, checkpoint_bytes(checkpoint, dtype, keep_in_float32,
                                              {{"encoder.embed_tokens.weight", "shared.weight"}})});
    }
    const DevicePlan plan = plan_pipeline_balanced(sizes, get_max_memory(options.max_memory));
    for (const auto& note : plan.notes) DIFFUSE_LOG_INFO("device_map balanced: {}", note);
    pipe.device_map_ = plan.map;
    DIFFUSE_LOG_INFO("device_map balanced: {}", pipe.device_map_.to_json());
  }
  // Each component's device: its place in the device map, else the pipeline's device.
  auto device_for = [&](const std::string& name) {
    return pipe.device_map_.contains(name) ? c10::Device(pipe.device_map_.at(name)) : pipe.device_;
  };
  if (!c.scheduler && wanted("scheduler"))
    c.scheduler = FlowMatchEulerDiscreteScheduler::from_pretrained(subfolder("scheduler"));
  if (!c.tokenizer && wanted("tokenizer")) c.tokenizer = ClipTokenizer::from_pretrained(subfolder("tokenizer"));
  if (!c.tokenizer_2 && wanted("tokenizer_2"))
    c.tokenizer_2 = T5Tokenizer::from_pretrained(subfolder("tokenizer_2"));
  if (c.text_encoder.is_empty() && wanted("text_encoder"))
    c.text_encoder = load_clip_text_model(subfolder("text_encoder"), dtype, device_for("text_encoder"));
  if (c.text_encoder_2.is_empty() && wanted("text_encoder_2"))
    c.text_encoder_2 = load_t5_encoder(subfolder("text_encoder_2"), dtype, device_for("text_encoder_2"));
  if (c.transformer.is_empty() && wanted("transformer"))
    c.transformer = load_flux_transformer(subfolder("transformer"), dtype, device_for("transformer"));
  if (c.vae.is_empty() && wanted("vae")) c.vae = load_autoencoder_kl(subfolder("vae"), dtype, device_for("vae"));
  if (!c.transformer.is_empty()) pipe.transformer_config_ = c.transformer->config();
  if (!c.vae.is_empty()) pipe.vae_config_ = c.vae->config();
  if (!c.transformer.is_empty()) c.transformer->set_attention_backend(parse_attention_backend(options.attention_backend));
  if (options.parallel_config) {
    if (!options.parallel_world)
      throw Error("FluxPipeline: parallel_config needs parallel_world, the communicator over the ranks "
                  "(Distributed::init().shared_communicator())");
    pipe.enable_parallelism(*options.parallel_config, options.parallel_world);
  }
  return pipe;
}

void FluxPipeline::enable_parallelism(const ContextParallelConfig& config, std::shared_ptr<Communicator> world) {
  if (!world) throw Error("FluxPipeline::enable_parallelism: no communicator given");
  transformer()->enable_parallelism(config, world);
  parallel_world_ = std::move(world);
}

void FluxPipeline::disable_parallelism() {
  if (has("transformer")) transformer()->disable_parallelism();
  parallel_world_.reset();
}

int FluxPipeline::parallel_rank() const { return parallel_world_ ? parallel_world_->rank() : 0; }

bool FluxPipeline::has(const std::string& component) const {
  const FluxComponents& c = components_;
  if (component == "scheduler") return c.scheduler.has_value();
  if (component == "tokenizer") return c.tokenizer.has_value();
  if (component == "tokenizer_2") return c.tokenizer_2.has_value();
  if (component == "text_encoder") return !c.text_encoder.is_empty();
  if (component == "text_encoder_2") return !c.text_encoder_2.is_empty();
  if (component == "transformer") return !c.transformer.is_empty();
  if (component == "vae") return !c.vae.is_empty();
  throw Error("FluxPipeline has no component '" + component + "'");
}

void FluxPipeline::release(const std::string& component) {
  FluxComponents& c = components_;
  if (!has(component)) return;
  if (component == "scheduler") c.scheduler.reset();
  if (component == "tokenizer") c.tokenizer.reset();
  if (component == "tokenizer_2") c.tokenizer_2.reset();
  if (component == "text_encoder") c.text_encoder = ClipTextModel(nullptr);
  if (component == "text_encoder_2") c.text_encoder_2 = T5EncoderModel(nullptr);
  if (component == "transformer") c.transformer = FluxTransformer2DModel(nullptr);
  if (component == "vae") c.vae = AutoencoderKL(nullptr);
}

std::vector<std::pair<std::string, torch::nn::Module*>> FluxPipeline::models() {
  FluxComponents& c = components_;
  std::vector<std::pair<std::string, torch::nn::Module*>> out;
  if (!c.text_encoder.is_empty()) out.emplace_back("text_encoder", c.text_encoder.get());
  if (!c.text_encoder_2.is_empty()) out.emplace_back("text_encoder_2", c.text_encoder_2.get());
  if (!c.transformer.is_empty()) out.emplace_back("transformer", c.transformer.get());
  if (!c.vae.is_empty()) out.emplace_back("vae", c.vae.get());
  return out;
}

void FluxPipeline::to(const std::string& device) {
  // As diffusers: moving a placed pipeline would undo its placement behind the user's back.
  if (!device_map_.empty())
    throw Error("FluxPipeline: the pipeline is placed by device_map \"balanced\" " + device_map_.to_json() +
                "; call reset_device_map() before moving it with to(\"" + device + "\")");
  if (offload_ != Offload::None)
    throw Error(std::string("FluxPipeline: ") + (offload_ == Offload::Model ? "model" : "sequential") +
                " CPU offload is enabled; call remove_all_hooks() before moving the pipeline with to(\"" + device + "\")");
  for (const auto& [name, model] : models())
    if (const ModuleHooks* hooks = hooks_of(*model))
      throw Error("FluxPipeline: component '" + name + "' is placed by its own device map " +
                  hooks->device_map().to_json() + "; call remove_all_hooks() before moving the pipeline with to(\"" +
                  device + "\")");
  device_ = c10::Device(device);
  for (const auto& [name, model] : models()) model->to(device_);
}

void FluxPipeline::reset_device_map() {
  if (device_map_.empty()) return;
  // diffusers' reset_device_map: every component back on the CPU, then the pipeline is free to move.
  for (const auto& [name, model] : models()) model->to(c10::kCPU);
  device_ = c10::kCPU;
  device_map_ = DeviceMap();
}

std::optional<c10::Device> FluxPipeline::model_offload_device() const {
  return offload_ == Offload::Model ? std::optional<c10::Device>(offload_device_) : std::nullopt;
}

c10::Device FluxPipeline::execution_device(const std::string& component) {
  if (offload_ == Offload::Model) return offload_device_;
  if (component == "text_encoder") return diffuse::execution_device(*text_encoder());
  if (component == "text_encoder_2") return diffuse::execution_device(*text_encoder_2());
  if (component == "transformer") return diffuse::execution_device(*transformer());
  if (component == "vae") return diffuse::execution_device(*vae());
  throw Error("FluxPipeline has no model component '" + component + "'");
}

namespace {
c10::Device offload_target(const std::string& requested, c10::Device pipeline_device) {
  if (!requested.empty()) return c10::Device(requested);
  if (pipeline_device.is_cuda()) return pipeline_device;
  return gpu_count() > 0 ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
}
}  // namespace

void FluxPipeline::remove_all_hooks() {
  for (const auto& [name, model] : models()) remove_hooks(*model);
  offload_ = Offload::None;
}

// Offload replaces any hooks, but not a device map: as in diffusers, a mapped pipeline must be reset first.
void FluxPipeline::start_offload(const char* what, const std::string& device) {
  if (!device_map_.empty())
    throw Error(std::string("FluxPipeline: ") + what + " is not allowed on a pipeline placed by device_map " +
                device_map_.to_json() + "; call reset_device_map() first");
  for (const auto& [name, model] : models())
    if (const ModuleHooks* hooks = hooks_of(*model); hooks && hooks->origin() == "device_map")
      throw Error(std::string("FluxPipeline: ") + what + ": component '" + name + "' is placed by its own device map " +
                  hooks->device_map().to_json() + "; call remove_all_hooks() first");
  remove_all_hooks();
  offload_device_ = offload_target(device, device_);
}

void FluxPipeline::enable_model_cpu_offload(const std::string& device) {
  start_offload("enable_model_cpu_offload", device);
  for (const auto& [name, model] : models()) model->to(c10::kCPU);
  offload_ = Offload::Model;
}

void FluxPipeline::enable_sequential_cpu_offload(const std::string& device) {
  start_offload("enable_sequential_cpu_offload", device);
  // Every unit "on the CPU", run on the GPU: weights come in block by block.
  for (const auto& [name, model] : models()) {
    model->to(c10::kCPU);
    dispatch_model(*model, DeviceMap{{"", "cpu"}},
                   {.execution_device = offload_device_, .origin = "sequential_offload"});
  }
  offload_ = Offload::Sequential;
}

namespace {
template <typename T>
T& require(T& component, bool present, const char* name, const char* why) {
  if (!present)
    throw Error(std::string("FluxPipeline: component '") + name + "' is not loaded, and " + why + " needs it");
  return component;
}
}  // namespace

FlowMatchEulerDiscreteScheduler& FluxPipeline::scheduler() {
  return *require(components_.scheduler, components_.scheduler.has_value(), "scheduler", "denoising");
}
FluxTransformer2DModel& FluxPipeline::transformer() {
  return require(components_.transformer, has("transformer"), "transformer", "denoising");
}
AutoencoderKL& FluxPipeline::vae() { return require(components_.vae, has("vae"), "vae", "decoding latents"); }
ClipTextModel& FluxPipeline::text_encoder() {
  return require(components_.text_encoder, has("text_encoder"), "text_encoder", "encoding a prompt");
}
T5EncoderModel& FluxPipeline::text_encoder_2() {
  return require(components_.text_encoder_2, has("text_encoder_2"), "text_encoder_2", "encoding a prompt");
}

PromptEmbeddings FluxPipeline::encode_prompt(const EncodeRequest& request) {
  const std::vector<std::string>& prompts = request.prompt.items();
  const std::vector<std::string>& prompts_2 = request.prompt_2.empty() ? prompts : request.prompt_2.items();
  if (prompts.empty()) throw Error("encode_prompt: the prompt list is empty");
  if (prompts_2.size() != prompts.size())
    throw Error("encode_prompt: prompt has " + std::to_string(prompts.size()) + " entries but prompt_2 has " +
                std::to_string(prompts_2.size()));
  if (request.num_images_per_prompt < 1)
    throw Error("num_images_per_prompt must be at least 1, got " + std::to_string(request.num_images_per_prompt));
  if (request.max_sequence_length < 1 || request.max_sequence_length > 512)
    throw Error("max_sequence_length must be in [1, 512], got " + std::to_string(request.max_sequence_length));
  auto& tokenizer = *require(components_.tokenizer, has("tokenizer"), "tokenizer", "encoding a prompt");
  auto& tokenizer_2 = *require(components_.tokenizer_2, has("tokenizer_2"), "tokenizer_2", "encoding a prompt");
  ClipTextModel& clip = text_encoder();
  T5EncoderModel& t5 = text_encoder_2();

  at::NoGradGuard no_grad;
  const c10::Device clip_device = execution_device("text_encoder");
  const c10::Device t5_device = execution_device("text_encoder_2");
  at::Tensor pooled, sequence;
  {
    const OnDeviceWhileRunning running(*clip, model_offload_device());
    at::Tensor clip_ids = tokenizer.encode_batch(prompts, tokenizer.model_max_length).to(clip_device);
    pooled = clip->forward(clip_ids).pooler_output;
  }
  {
    const OnDeviceWhileRunning running(*t5, model_offload_device());
    at::Tensor t5_ids = tokenizer_2.encode_batch(prompts_2, request.max_sequence_length).to(t5_device);
    sequence = t5->forward(t5_ids);
  }

  PromptEmbeddings out;
  out.pooled_prompt_embeds = repeat_rows(pooled.to(dtype_), request.num_images_per_prompt);
  out.prompt_embeds = repeat_rows(sequence.to(dtype_), request.num_images_per_prompt);
  out.text_ids = at::zeros({request.max_sequence_length, 3}, at::TensorOptions().dtype(dtype_).device(t5_device));
  return out;
}

// The largest activations of a request, estimated from the shapes alone, against the memory of the
// device that holds them: a request that cannot fit (100 megapixels on the CPU's math attention, say)
// is refused before any work, instead of failing deep inside the allocator or computing for hours.
void FluxPipeline::check_memory_for(const GenerateRequest& request, int64_t height, int64_t width) {
  const c10::Device device = has("transformer") ? execution_device("transformer") : device_;
  const uint64_t available = available_memory(device.str());
  if (available == 0) return;  // unknown
  const auto rows = static_cast<uint64_t>(std::max<int64_t>(request.num_images_per_prompt, 1));
  const uint64_t tokens = static_cast<uint64_t>((height / 16) * (width / 16) + request.max_sequence_length);
  struct Need {
    uint64_t bytes;
    std::string what;
  } need{0, ""};
  if (has("transformer")) {
    const FluxTransformerConfig& c = transformer_config_;
    const at::Tensor probe = at::empty({1, 1, 1, c.attention_head_dim}, at::TensorOptions(dtype_).device(device));
    const bool math = resolve_attention_backend(transformer()->attention_backend(), probe) == AttentionBackend::math;
    const uint64_t shards = parallel_world_ ? static_cast<uint64_t>(parallel_world_->size()) : 1;
    // Math attention holds float32 scores and probabilities for every (query, key) pair of a head's
    // shard; fused kernels hold nothing quadratic, only the tokens.
    const uint64_t attention = math ? 2 * 4 * rows * static_cast<uint64_t>(c.num_attention_heads) *
                                          ((tokens + shards - 1) / shards) * tokens
                                    : 8 * rows * tokens * static_cast<uint64_t>(c.inner_dim()) * 4;
    need = {attention, math ? "attention scores over " + std::to_string(tokens) + " tokens (the math path)"
                            : "the transformer's activations over " + std::to_string(tokens) + " tokens"};
  }
  if (request.output_type != OutputType::Latent && !vae_config_.block_out_channels.empty()) {
    // The decoder's last blocks run at full resolution with block_out_channels[0] channels, in float32
    // for GroupNorm: input and output of a convolution at once.
    const uint64_t decoder = 2 * 4 * rows * static_cast<uint64_t>(vae_config_.block_out_channels.front()) *
                             static_cast<uint64_t>(height) * static_cast<uint64_t>(width);
    if (decoder > need.bytes) need = {decoder, "the VAE decoder at full resolution"};
  }
  if (need.bytes > available)
    throw Error("a " + std::to_string(height) + "x" + std::to_string(width) + " image needs at least " +
                format_bytes(need.bytes) + " on " + device.str() + " for " + need.what + ", but " +
                format_bytes(available) + " is available; ask for a smaller size" +
                (need.what.find("math") != std::string::npos ? " or run on a GPU with a fused attention backend" : ""));
}

uint64_t FluxPipeline::shared_random_seed() {
  const uint64_t mine = (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
  if (!parallel_world_) return mine;
  // Every rank of a context-parallel call must start from the same noise: rank 0's seed.
  at::Tensor seed = at::full({1}, static_cast<int64_t>(mine >> 1), at::TensorOptions(at::kLong));
  seed = parallel_world_->broadcast(seed.to(parallel_world_->device()), /*root=*/0).cpu();
  return static_cast<uint64_t>(seed.item<int64_t>());
}

at::Tensor FluxPipeline::draw_latents(const GenerateRequest& request, int64_t batch, int64_t height, int64_t width) {
  const int64_t channels = num_channels_latents_ * 4;
  const int64_t sequence = (height / vae_scale_factor_ / 2) * (width / vae_scale_factor_ / 2);
  const c10::Device device = has("transformer") ? execution_device("transformer") : device_;
  if (request.latents.defined()) {
    const auto& l = request.latents;
    if (l.dim() != 3 || l.size(0) != batch || l.size(1) != sequence || l.size(2) != channels)
      throw Error("latents have shape " + c10::str(l.sizes()) + " but this request needs packed latents [" +
                  std::to_string(batch) + ", " + std::to_string(sequence) + ", " + std::to_string(channels) +
                  "] (" + std::to_string(height) + "x" + std::to_string(width) + ")");
    return l.to(device, dtype_);
  }
  const at::Generator generator =
      request.generator ? *request.generator : cpu_generator(request.seed.value_or(shared_random_seed()));
  return prepare_latents(batch, num_channels_latents_, height, width, vae_scale_factor_, dtype_, device, generator);
}

at::Tensor FluxPipeline::denoise(const GenerateRequest& request, const PromptEmbeddings& embeddings,
                                 at::Tensor latents, int64_t height, int64_t width, bool& interrupted) {
  FluxTransformer2DModel& model = transformer();
  FlowMatchEulerDiscreteScheduler& steps = scheduler();
  const c10::Device device = latents.device();
  const int64_t batch = latents.size(0);

  const std::vector<double> sigmas = request.sigmas.value_or(flux_sigmas(request.num_inference_steps));
  const auto& config = steps.config();
  const double mu = calculate_shift(latents.size(1), config.base_image_seq_len, config.max_image_seq_len,
                                    config.base_shift, config.max_shift);
  steps.set_timesteps(static_cast<int64_t>(sigmas.size()), mu, sigmas);
  const at::Tensor timesteps = steps.timesteps();
  const int64_t num_steps = timesteps.size(0);

  FluxTransformerInputs inputs;
  inputs.encoder_hidden_states = embeddings.prompt_embeds.to(device, dtype_);
  inputs.pooled_projections = embeddings.pooled_prompt_embeds.to(device, dtype_);
  inputs.txt_ids = embeddings.text_ids.to(device, dtype_);
  inputs.img_ids = prepare_latent_image_ids(height / vae_scale_factor_ / 2, width / vae_scale_factor_ / 2)
                       .to(device, dtype_);
  if (model->config().guidance_embeds)
    inputs.guidance = at::full({batch}, request.guidance_scale, at::TensorOptions().dtype(at::kFloat).device(device));

  const bool show_progress = request.progress.value_or(isatty(STDERR_FILENO) == 1);
  ProgressBar progress(num_steps, show_progress);
  at::NoGradGuard no_grad;
  const OnDeviceWhileRunning running(*model, model_offload_device());
  for (int64_t i = 0; i < num_steps; ++i) {
    const at::Tensor t = timesteps[i];
    inputs.hidden_states = latents;
    // diffusers: t.expand(batch).to(latents.dtype), divided by 1000 in that dtype.
    inputs.timestep = t.expand({batch}).to(device, latents.scalar_type()) / 1000;
    // Under a device map the last block may run on another GPU than the latents live on.
    at::Tensor noise_pred = model->forward(inputs).to(device);
    latents = steps.step(noise_pred, i, latents);
    progress.advance();
    if (request.callback &&
        !request.callback(StepInfo{i, num_steps, t.item<double>(), latents})) {
      interrupted = i + 1 < num_steps;
      break;
    }
  }
  return latents;
}

at::Tensor FluxPipeline::decode_latents(const at::Tensor& latents, int64_t height, int64_t width) {
  AutoencoderKL& decoder = vae();
  at::NoGradGuard no_grad;
  const c10::Device device = execution_device("vae");
  const c10::ScalarType dtype = decoder->parameters().front().scalar_type();
  const OnDeviceWhileRunning running(*decoder, model_offload_device());
  at::Tensor unpacked = unpack_latents(latents, height, width, vae_scale_factor_);
  at::Tensor scaled = unscale_latents(unpacked, decoder->config()).to(device, dtype);
  at::Tensor decoded = decoder->decode(scaled);
  // VaeImageProcessor.postprocess: denormalize [-1, 1] -> [0, 1].
  return (decoded.to(at::kFloat) / 2 + 0.5).clamp(0, 1);
}

GenerateOutput FluxPipeline::generate(const GenerateRequest& request) {
  const auto start = Clock::now();
  // ---- check the request before any model runs ---------------------------------------------------
  const bool has_prompt = !request.prompt.empty();
  const bool has_embeds = request.prompt_embeds.defined() || request.pooled_prompt_embeds.defined();
  if (has_prompt && has_embeds) throw Error("give either prompt or prompt_embeds, not both");
  if (!has_prompt && !has_embeds) throw Error("give a prompt (or prompt_embeds and pooled_prompt_embeds)");
  if (has_embeds && !(request.prompt_embeds.defined() && request.pooled_prompt_embeds.defined()))
    throw Error("prompt_embeds and pooled_prompt_embeds go together: give both");
  if (request.num_images_per_prompt < 1)
    throw Error("num_images_per_prompt must be at least 1, got " + std::to_string(request.num_images_per_prompt));
  if (request.num_inference_steps < 1 && !request.sigmas)
    throw Error("num_inference_steps must be at least 1, got " + std::to_string(request.num_inference_steps));
  if (request.sigmas && request.sigmas->empty()) throw Error("sigmas must not be empty");

  const int64_t multiple = vae_scale_factor_ * 2;
  auto checked_size = [&](std::optional<int64_t> value, const char* name) {
    const int64_t size = value.value_or(default_sample_size * vae_scale_factor_);
    if (size < multiple)
      throw Error(std::string(name) + " must be at least " + std::to_string(multiple) + ", got " + std::to_string(size));
    if (size > 16384)
      throw Error(std::string(name) + " " + std::to_string(size) + " is over the 16384 limit");
    if (size % multiple == 0) return size;
    const int64_t rounded = size / multiple * multiple;
    if (!request.round_size)
      throw Error(std::string(name) + " " + std::to_string(size) + " is not a multiple of " + std::to_string(multiple) +
                  " (vae_scale_factor * 2); use " + std::to_string(rounded) + " or " + std::to_string(rounded + multiple) +
                  ", or set round_size to round down as diffusers does");
    DIFFUSE_LOG_WARN("{} {} is not a multiple of {}; it is rounded down to {}", name, size, multiple, rounded);
    return rounded;
  };
  const int64_t height = checked_size(request.height, "height");
  const int64_t width = checked_size(request.width, "width");
  check_memory_for(request, height, width);

  if (has_embeds) {
    const auto& pe = request.prompt_embeds;
    const auto& pooled = request.pooled_prompt_embeds;
    if (pe.dim() != 3 || pe.size(2) != transformer_config_.joint_attention_dim)
      throw Error("prompt_embeds have shape " + c10::str(pe.sizes()) + "; expected [batch, sequence, " +
                  std::to_string(transformer_config_.joint_attention_dim) + "]");
    if (pooled.dim() != 2 || pooled.size(1) != transformer_config_.pooled_projection_dim || pooled.size(0) != pe.size(0))
      throw Error("pooled_prompt_embeds have shape " + c10::str(pooled.sizes()) + "; expected [" +
                  std::to_string(pe.size(0)) + ", " + std::to_string(transformer_config_.pooled_projection_dim) + "]");
  }

  GenerateOutput out;
  out.height = height;
  out.width = width;

  // ---- encode --------------------------------------------------------------------------------------
  auto stage = Clock::now();
  PromptEmbeddings embeddings;
  if (has_prompt) {
    embeddings = encode_prompt({.prompt = request.prompt,
                                .prompt_2 = request.prompt_2,
                                .num_images_per_prompt = request.num_images_per_prompt,
                                .max_sequence_length = request.max_sequence_length});
  } else {
    embeddings.prompt_embeds = repeat_rows(request.prompt_embeds, request.num_images_per_prompt);
    embeddings.pooled_prompt_embeds = repeat_rows(request.pooled_prompt_embeds, request.num_images_per_prompt);
    embeddings.text_ids = at::zeros({request.prompt_embeds.size(1), 3}, at::TensorOptions().dtype(dtype_));
  }
  out.times.encode_seconds = seconds_since(stage);

  // ---- denoise -------------------------------------------------------------------------------------
  stage = Clock::now();
  const int64_t batch = embeddings.prompt_embeds.size(0);
  at::Tensor latents = draw_latents(request, batch, height, width);
  out.latents = denoise(request, embeddings, latents, height, width, out.interrupted);
  out.times.denoise_seconds = seconds_since(stage);

  // ---- decode --------------------------------------------------------------------------------------
  // Under context parallelism every rank holds the same latents; rank 0 alone makes the image.
  if (request.output_type != OutputType::Latent && parallel_rank() == 0) {
    stage = Clock::now();
    out.image_tensor = decode_latents(out.latents, height, width).to(at::kCPU);
    if (request.output_type == OutputType::Image) out.images = images_from_tensor(out.image_tensor);
    out.times.decode_seconds = seconds_since(stage);
  }
  out.times.total_seconds = seconds_since(start);
  return out;
}

}  // namespace diffuse
