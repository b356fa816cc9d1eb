#pragma once
// Loading one model with a device map, as diffusers' ModelMixin.from_pretrained(..., device_map=...,
// max_memory=...) does:
//
//   auto transformer = load_model<FluxTransformer2DModel>(dir / "transformer",
//       {.dtype = at::kBFloat16, .device_map = "auto",
//        .max_memory = {{"cuda:0", "16GB"}, {"cuda:1", "16GB"}}});
//   std::cout << transformer->device_map();   // {"time_text_embed": "cuda:0", ..., "proj_out": "cuda:1"}
//
// The model is built from its config with uninitialized parameters (no memory is touched), sized from
// their shapes, planned (placement/planner.hpp), and then each unit's weights are read from the
// safetensors straight to the unit's device; units on "disk" are not read until they run.
//
// Any model loads so when its Impl class declares `using Config = ...;` (a struct with from_file and,
// optionally, block_counts), derives from PlaceableModel, and, where the checkpoint needs it, declares
// `static WeightLoadOptions weight_load_options(c10::ScalarType dtype)` (tied weights, float32 parts).

#include <c10/core/ScalarType.h>

#include <filesystem>
#include <string>
#include <variant>

#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/t5_encoder.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/models/weights.hpp"
#include "diffuse/placement/device_map.hpp"
#include "diffuse/placement/memory_size.hpp"

namespace diffuse {

// A strategy ("auto", "balanced", "balanced_low_0", "sequential"; "" for none) or an explicit map.
using DeviceMapOption = std::variant<std::string, DeviceMap>;

struct ModelLoadOptions {
  c10::ScalarType dtype = c10::kFloat;
  // Where the whole model goes when there is no device_map.
  std::string device = "cpu";
  DeviceMapOption device_map;
  // Budgets per device, e.g. {{"cuda:0", "16GB"}, {"cpu", "64GB"}, {"disk", "100GB"}}; empty: what the
  // GPUs and the CPU have available (placement/device_memory.hpp). Units go to "disk" only when it is
  // named here.
  MaxMemory max_memory;
  // Kept free on each device that runs units, for activations: "auto" estimates it from the config
  // (activation_estimate), or a size ("2GB", "0").
  std::string activation_memory = "auto";
};

// Plans `model`'s placement as `options` say (its parameters uninitialized on the CPU), loads each
// weight to its unit's device and sets the hooks. `what` names the model in logs and errors.
void load_placed_model(torch::nn::Module& model, const Checkpoint& checkpoint, const ModelLoadOptions& options,
                       const WeightLoadOptions& weights, const std::string& what);

// The weight options a model's checkpoint loads with in `dtype` (its Impl's weight_load_options, if any).
template <typename Model>
WeightLoadOptions model_weight_load_options(c10::ScalarType dtype) {
  using Impl = typename Model::ContainedType;
  WeightLoadOptions weights;
  if constexpr (requires { Impl::weight_load_options(dtype); }) weights = Impl::weight_load_options(dtype);
  weights.dtype = dtype;
  return weights;
}

// diffusers' AutoModel.from_pretrained(folder, torch_dtype=..., device_map=..., max_memory=...) for one
// of diffuse's models, e.g. load_model<UNet2DConditionModel>(dir / "unet", {.device = "cuda"}).
// Throws diffuse::Error naming the file for a bad config or checkpoint, and the budgets when nothing fits.
template <typename Model>
Model load_model(const std::filesystem::path& folder, const ModelLoadOptions& options) {
  using Config = typename Model::ContainedType::Config;
  WeightLoadOptions weights = model_weight_load_options<Model>(options.dtype);
  weights.device = c10::Device(options.device);
  const std::string* strategy = std::get_if<std::string>(&options.device_map);
  if (strategy != nullptr && strategy->empty()) return load_pretrained<Model, Config>(folder, weights);

  const Config config = Config::from_file(folder / "config.json");
  const Checkpoint checkpoint = Checkpoint::open(folder);
  if constexpr (requires { config.block_counts(); })
    check_block_counts(config.block_counts(), checkpoint, folder / "config.json");
  // Built on the CPU, uninitialized: the pages are never touched, each tensor is replaced by the
  // checkpoint's on its own device, and units on "disk" get empty placeholders.
  Model model(config, at::TensorOptions().dtype(options.dtype).device(c10::kCPU));
  load_placed_model(*model, checkpoint, options, weights,
                    folder.filename().empty() ? folder.parent_path().filename().string() : folder.filename().string());
  return model;
}

// The same, by name (kept for callers written before load_model).
FluxTransformer2DModel load_flux_transformer(const std::filesystem::path& folder, const ModelLoadOptions& options);
T5EncoderModel load_t5_encoder(const std::filesystem::path& folder, const ModelLoadOptions& options);
ClipTextModel load_clip_text_model(const std::filesystem::path& folder, const ModelLoadOptions& options);
AutoencoderKL load_autoencoder_kl(const std::filesystem::path& folder, const ModelLoadOptions& options);

}  // namespace diffuse
