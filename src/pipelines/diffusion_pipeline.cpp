#include "diffuse/pipelines/diffusion_pipeline.hpp"

#include <algorithm>

#include "diffuse/error.hpp"
#include "diffuse/errors.hpp"
#include "diffuse/pipelines/component_registry.hpp"
#include "diffuse/placement/device_memory.hpp"
#include "diffuse/placement/dispatch.hpp"
#include "diffuse/placement/module_hooks.hpp"
#include "diffuse/placement/offloaded_tensors.hpp"
#include "diffuse/placement/planner.hpp"
#include "log.hpp"

namespace diffuse {
namespace {

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

c10::Device offload_target(const std::string& requested, c10::Device pipeline_device) {
  if (!requested.empty()) return c10::Device(requested);
  if (pipeline_device.is_cuda()) return pipeline_device;
  return gpu_count() > 0 ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
}

}  // namespace

bool DiffusionPipeline::is_declared(const std::string& component) const {
  return std::any_of(spec_.components.begin(), spec_.components.end(),
                     [&](const PipelineSpec::ComponentSpec& c) { return c.name == component; });
}

void DiffusionPipeline::load_components(const std::filesystem::path& folder, PipelineOptions& options) {
  const auto index_path = folder / "model_index.json";
  if (!std::filesystem::exists(index_path))
    throw NotFoundError(folder.string() + ": no model_index.json (not a diffusers pipeline folder)");
  const ModelIndex index = ModelIndex::from_file(index_path);
  const std::string& family = spec_.class_name;
  cuda_graphs_ = options.cuda_graphs;
  if (index.class_name != family)
    DIFFUSE_LOG_WARN("{}: pipeline class is {}, loading it as {}", index_path.string(), index.class_name, family);

  for (const std::string& name : options.skip)
    if (!is_declared(name)) throw Error("cannot skip '" + name + "': " + family + " has no such component");
  for (const auto& [name, component] : options.components.entries())
    if (!is_declared(name)) throw Error("component '" + name + "' was given, but " + family + " has no such component");

  folder_ = folder;
  dtype_ = options.dtype;
  device_ = c10::Device(options.device);
  components_ = std::move(options.components);

  // Every component the family runs must be named in model_index.json with a class it knows; the
  // others (safety_checker, feature_extractor, image_encoder in SD folders) are not run.
  for (const auto& c : spec_.components) {
    auto entry = index.components.find(c.name);
    if (entry == index.components.end())
      throw NotFoundError(index_path.string() + ": component '" + c.name + "' is missing (" + family + " needs it)");
    if (!contains(c.classes, entry->second.class_name))
      throw Error(index_path.string() + ": component '" + c.name + "' has class " + entry->second.class_name +
                  ", which diffuse does not implement for " + family + " (expected " + join(c.classes) + ")");
  }
  for (const auto& [name, entry] : index.components)
    if (!is_declared(name))
      DIFFUSE_LOG_INFO("{}: component '{}' ({}) is not used by diffuse's {}; it is not loaded", folder.string(), name,
                       entry.class_name, family);

  auto wanted = [&](const std::string& name) { return !contains(options.skip, name) && !has(name); };
  auto class_of = [&](const std::string& name) -> const ComponentClass& {
    const std::string& class_name = index.components.at(name).class_name;
    if (const ComponentClass* known = find_component_class(class_name)) return *known;
    // A scheduler class that the scheduler registry knows loads as a scheduler.
    static const ComponentClass scheduler_class{
        .kind = ComponentClass::Kind::Scheduler,
        .load = [](const std::filesystem::path& folder, const ModelLoadOptions&) {
          return Component::of(std::shared_ptr<Scheduler>(load_scheduler(folder)));
        }};
    if (name == "scheduler") return scheduler_class;
    throw Error(index_path.string() + ": component '" + name + "' has class " + class_name +
                ", which no loader is registered for");
  };

  if (!options.device_map.empty()) {
    if (options.device_map != "balanced")
      throw Error(family + ": device_map '" + options.device_map +
                  "' is not supported for a pipeline (supported: \"balanced\"); to spread one model over devices, "
                  "load it with its own device_map (\"auto\", ...) and pass it in `components`");
    // diffusers' balanced map: whole components, sized from their headers (no weight is read).
    std::vector<PlacementUnit> sizes;
    for (const auto& c : spec_.components) {
      const ComponentClass& loader = class_of(c.name);
      if (loader.kind != ComponentClass::Kind::Model || !wanted(c.name)) continue;
      sizes.push_back({c.name, loader.weight_bytes(component_folder(c.name), dtype_)});
    }
    const DevicePlan plan = plan_pipeline_balanced(sizes, get_max_memory(options.max_memory));
    for (const auto& note : plan.notes) DIFFUSE_LOG_INFO("device_map balanced: {}", note);
    device_map_ = plan.map;
    DIFFUSE_LOG_INFO("device_map balanced: {}", device_map_.to_json());
  }

  for (const auto& c : spec_.components) {
    if (!wanted(c.name)) continue;
    // Each component's device: its place in the device map, else the pipeline's device.
    const std::string device = device_map_.contains(c.name) ? device_map_.at(c.name) : device_.str();
    components_.set(c.name, class_of(c.name).load(component_folder(c.name), {.dtype = dtype_, .device = device}));
  }

  // A tokenizer of another model feeds ids past its encoder's embedding table: say so now, naming both,
  // rather than at the first prompt (on CUDA a device-side assert that ends the process).
  for (const auto& [tokenizer, encoder] : spec_.tokenizer_encoders) {
    if (!has(tokenizer) || !has(encoder)) continue;
    const ComponentClass& tokenizer_class = class_of(tokenizer);
    const ComponentClass& encoder_class = class_of(encoder);
    if (!tokenizer_class.vocab_size || !encoder_class.vocab_size) continue;
    int64_t ids = 0, rows = 0;
    try {
      ids = tokenizer_class.vocab_size(components_.at(tokenizer));
      rows = encoder_class.vocab_size(components_.at(encoder));
    } catch (const Error&) {
      continue;  // a component given in options of another class than model_index.json names
    }
    if (ids > rows)
      throw Error(folder.string() + ": " + tokenizer + "/ produces " + std::to_string(ids) + " token ids but " + encoder +
                  "/ embeds only " + std::to_string(rows) + " (its vocab_size); the tokenizer does not belong to "
                  "this text encoder");
  }
}

std::filesystem::path DiffusionPipeline::component_folder(const std::string& name) const {
  const auto path = folder_ / name;
  if (!std::filesystem::is_directory(path))
    throw NotFoundError(folder_.string() + ": component folder '" + name + "' is missing");
  return path;
}

bool DiffusionPipeline::has(const std::string& component) const {
  if (!is_declared(component)) throw Error(spec_.class_name + " has no component '" + component + "'");
  return components_.has(component);
}

void DiffusionPipeline::release(const std::string& component) {
  if (has(component)) components_.erase(component);
}

const Component& DiffusionPipeline::require(const std::string& name, const char* why) const {
  if (!has(name))
    throw Error(spec_.class_name + ": component '" + name + "' is not loaded, and " + why + " needs it");
  return components_.at(name);
}

Scheduler& DiffusionPipeline::scheduler() { return require_object<Scheduler>("scheduler", "denoising"); }

void DiffusionPipeline::set_scheduler(const std::string& class_name) {
  set_scheduler(std::shared_ptr<Scheduler>(make_scheduler(class_name, scheduler().config())));
}

void DiffusionPipeline::set_scheduler(std::shared_ptr<Scheduler> scheduler) {
  if (!scheduler) throw Error(spec_.class_name + ": set_scheduler was given no scheduler");
  DIFFUSE_LOG_DEBUG("{}: scheduler {}", spec_.class_name, scheduler->class_name());
  components_.set("scheduler", Component::of(std::move(scheduler)));
}

std::vector<std::pair<std::string, torch::nn::Module*>> DiffusionPipeline::models() const {
  std::vector<std::pair<std::string, torch::nn::Module*>> out;
  for (const std::string& name : spec_.model_cpu_offload_seq)
    if (components_.has(name) && components_.at(name).is_model())
      out.emplace_back(name, components_.at(name).module().get());
  for (const auto& [name, component] : components_.entries())
    if (component.is_model() && !contains(spec_.model_cpu_offload_seq, name))
      out.emplace_back(name, component.module().get());
  return out;
}

void DiffusionPipeline::to(const std::string& device) {
  const std::string& family = spec_.class_name;
  // As diffusers: moving a placed pipeline would undo its placement behind the user's back.
  if (!device_map_.empty())
    throw Error(family + ": the pipeline is placed by device_map \"balanced\" " + device_map_.to_json() +
                "; call reset_device_map() before moving it with to(\"" + device + "\")");
  if (offload_ != Offload::None)
    throw Error(family + ": " + (offload_ == Offload::Model ? "model" : "sequential") +
                " CPU offload is enabled; call remove_all_hooks() before moving the pipeline with to(\"" + device + "\")");
  for (const auto& [name, model] : models())
    if (const ModuleHooks* hooks = hooks_of(*model))
      throw Error(family + ": component '" + name + "' is placed by its own device map " +
                  hooks->device_map().to_json() + "; call remove_all_hooks() before moving the pipeline with to(\"" +
                  device + "\")");
  device_ = c10::Device(device);
  for (const auto& [name, model] : models()) model->to(device_);
}

void DiffusionPipeline::reset_device_map() {
  if (device_map_.empty()) return;
  // diffusers' reset_device_map: every component back on the CPU, then the pipeline is free to move.
  for (const auto& [name, model] : models()) model->to(c10::kCPU);
  device_ = c10::kCPU;
  device_map_ = DeviceMap();
}

c10::Device DiffusionPipeline::execution_device(const std::string& component) const {
  if (offload_ == Offload::Model) return offload_device_;
  const Component& c = require(component, "execution_device");
  if (!c.is_model()) throw Error(spec_.class_name + ": component '" + component + "' is not a model");
  return diffuse::execution_device(*c.module());
}

DiffusionPipeline::OnDevice::OnDevice(OffloadedTensors* weights) : weights_(weights) {
  if (weights_) weights_->bring_in();
}

DiffusionPipeline::OnDevice::~OnDevice() {
  if (weights_) weights_->drop();
}

DiffusionPipeline::OnDevice DiffusionPipeline::on_device_while_running(const std::string& component) const {
  if (offload_ != Offload::Model) return OnDevice(nullptr);
  torch::nn::Module& model = *require(component, "offloading").module();
  std::vector<at::Tensor> tensors = module_tensors(model);
  std::shared_ptr<OffloadedTensors>& weights = offloaded_[component];
  if (!weights || !weights->holds(tensors))
    weights = std::make_shared<OffloadedTensors>(std::move(tensors), offload_device_);
  return OnDevice(weights.get());
}

bool DiffusionPipeline::can_capture_cuda_graph(const std::string& component) const {
  return cuda_graphs_ && context_parallel_degree() <= 1 && runs_in_place_on_cuda(component);
}

bool DiffusionPipeline::runs_in_place_on_cuda(const std::string& component) const {
  if (offload_ == Offload::Sequential || !has(component)) return false;
  const Component& c = require(component, "running in place");
  if (!c.is_model() || hooks_of(*c.module())) return false;
  return execution_device(component).is_cuda();
}

void DiffusionPipeline::remove_all_hooks() {
  for (const auto& [name, model] : models()) remove_hooks(*model);
  // The weights stay on their home copies, in (pinned) CPU memory.
  offloaded_.clear();
  offload_ = Offload::None;
}

// Offload replaces any hooks, but not a device map: as in diffusers, a mapped pipeline must be reset first.
void DiffusionPipeline::start_offload(const char* what, const std::string& device) {
  const std::string& family = spec_.class_name;
  if (!device_map_.empty())
    throw Error(family + ": " + what + " is not allowed on a pipeline placed by device_map " + device_map_.to_json() +
                "; call reset_device_map() first");
  for (const auto& [name, model] : models())
    if (const ModuleHooks* hooks = hooks_of(*model); hooks && hooks->origin() == "device_map")
      throw Error(family + ": " + what + ": component '" + name + "' is placed by its own device map " +
                  hooks->device_map().to_json() + "; call remove_all_hooks() first");
  remove_all_hooks();
  offload_device_ = offload_target(device, device_);
}

void DiffusionPipeline::enable_model_cpu_offload(const std::string& device) {
  start_offload("enable_model_cpu_offload", device);
  // Every model to CPU memory, pinned once here when it runs on CUDA.
  for (const auto& [name, model] : models())
    offloaded_[name] = std::make_shared<OffloadedTensors>(module_tensors(*model), offload_device_);
  offload_ = Offload::Model;
}

void DiffusionPipeline::enable_sequential_cpu_offload(const std::string& device) {
  start_offload("enable_sequential_cpu_offload", device);
  // Every unit "on the CPU", run on the GPU: weights come in block by block.
  for (const auto& [name, model] : models()) {
    model->to(c10::kCPU);
    dispatch_model(*model, DeviceMap{{"", "cpu"}}, {.execution_device = offload_device_, .origin = "sequential_offload"});
  }
  offload_ = Offload::Sequential;
}

}  // namespace diffuse
