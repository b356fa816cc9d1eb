#pragma once
// Loading one model with a device map, as diffusers' ModelMixin.from_pretrained(..., device_map=...,
// max_memory=...) does:
//
//   auto transformer = load_flux_transformer(dir / "transformer",
//       {.dtype = at::kBFloat16, .device_map = "auto",
//        .max_memory = {{"cuda:0", "16GB"}, {"cuda:1", "16GB"}}});
//   std::cout << transformer->device_map();   // {"time_text_embed": "cuda:0", ..., "proj_out": "cuda:1"}
//
// The model is built from its config with uninitialized parameters (no memory is touched), sized from
// their shapes, planned (placement/planner.hpp), and then each unit's weights are read from the
// safetensors straight to the unit's device; units on "disk" are not read until they run.

#include <c10/core/ScalarType.h>

#include <filesystem>
#include <string>
#include <variant>

#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/t5_encoder.hpp"
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

FluxTransformer2DModel load_flux_transformer(const std::filesystem::path& folder, const ModelLoadOptions& options);
T5EncoderModel load_t5_encoder(const std::filesystem::path& folder, const ModelLoadOptions& options);
ClipTextModel load_clip_text_model(const std::filesystem::path& folder, const ModelLoadOptions& options);
AutoencoderKL load_autoencoder_kl(const std::filesystem::path& folder, const ModelLoadOptions& options);

}  // namespace diffuse
