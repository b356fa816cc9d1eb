#include "diffuse/placement/load_model.hpp"

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/models/weights.hpp"
#include "diffuse/placement/device_memory.hpp"
#include "diffuse/placement/dispatch.hpp"
#include "diffuse/placement/model_units.hpp"
#include "log.hpp"

namespace diffuse {
namespace {

// load_weights with a device per unit: each tensor is read from the mmap straight to its unit's
// device; units on "disk" are not read (their hooks read them when they run).
void load_placed_weights(torch::nn::Module& model, const Checkpoint& checkpoint, const DeviceMap& map,
                         WeightLoadOptions options) {
  options.device_of = [&map](const std::string& name) -> std::optional<c10::Device> {
    const std::string& device = *map.device_of(name);
    if (device == "disk") return std::nullopt;
    return c10::Device(device);
  };
  load_weights(model, checkpoint, options);
}

}  // namespace

void load_placed_model(torch::nn::Module& model, const Checkpoint& checkpoint, const ModelLoadOptions& options,
                       const WeightLoadOptions& weights, const std::string& what) {
  const std::vector<ModelUnit> units = model_units(model, weights.keep_in_float32);
  DeviceMap map;
  if (const std::string* strategy = std::get_if<std::string>(&options.device_map)) {
    PlanOptions plan_options;
    plan_options.strategy = parse_placement_strategy(*strategy);
    plan_options.activation_bytes = options.activation_memory == "auto" ? activation_estimate(model)
                                                                        : parse_memory_size(options.activation_memory);
    plan_options.model = what;
    const DevicePlan plan = plan_model_placement(placement_units(units), get_max_memory(options.max_memory), plan_options);
    for (const auto& note : plan.notes) DIFFUSE_LOG_INFO("{}", note);
    map = plan.map;
  } else {
    map = resolve_device_map(std::get<DeviceMap>(options.device_map), units, what);
  }
  DIFFUSE_LOG_INFO("{}: device map {}", what, map.to_json());
  load_placed_weights(model, checkpoint, map, weights);
  dispatch_model(model, map, {.checkpoint = checkpoint});
  model.eval();
}

FluxTransformer2DModel load_flux_transformer(const std::filesystem::path& folder, const ModelLoadOptions& options) {
  return load_model<FluxTransformer2DModel>(folder, options);
}

T5EncoderModel load_t5_encoder(const std::filesystem::path& folder, const ModelLoadOptions& options) {
  return load_model<T5EncoderModel>(folder, options);
}

ClipTextModel load_clip_text_model(const std::filesystem::path& folder, const ModelLoadOptions& options) {
  return load_model<ClipTextModel>(folder, options);
}

AutoencoderKL load_autoencoder_kl(const std::filesystem::path& folder, const ModelLoadOptions& options) {
  return load_model<AutoencoderKL>(folder, options);
}

}  // namespace diffuse
