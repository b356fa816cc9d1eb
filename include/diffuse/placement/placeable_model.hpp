#pragma once
// What placement needs to know of a model, declared by the model itself, so that the planner, the
// device-map loader and the offload hooks work on any model without a list of models of their own.
//
// A model is cut into units, each placed whole on one device (a block, an embedding, a norm). The
// model names its containers: modules whose children are units (or containers again); "" is the
// model itself. Everything that is not a container is never split. A model that runs its units
// through HookedModule::forward_unit / run_unit can then be spread over devices and offloaded:
//
//   class MyModelImpl : public torch::nn::Module, public PlaceableModel {
//     std::vector<std::string> unit_containers() const override { return {"", "blocks"}; }
//     uint64_t activation_estimate() const override { return tokens * width * 20 * element_bytes; }
//     at::Tensor forward(at::Tensor x) {
//       x = forward_unit(*embed, x);
//       for (auto& block : *blocks) x = forward_unit(*block->as<BlockImpl>(), x);
//       return forward_unit(*out, x);
//     }
//   };

#include <cstdint>
#include <string>
#include <vector>

#include "diffuse/placement/module_hooks.hpp"

namespace diffuse {

class PlaceableModel : public HookedModule {
 public:
  // The modules whose children are units, by dotted name ("" is the model, "encoder.layers" a
  // ModuleList). Containers must own no parameters or buffers of their own.
  virtual std::vector<std::string> unit_containers() const = 0;
  // A rough bound on the largest unit's activations for one image at the family's usual size (1024x1024
  // for FLUX.1, 512x512 for SD 1.5), in the model's dtype: what a device that runs units keeps free.
  virtual uint64_t activation_estimate() const = 0;
};

// Bytes per element of a model's weights (of its first parameter; 4 for a model without any), for
// activation estimates in the model's dtype.
inline uint64_t weight_element_bytes(const torch::nn::Module& model) {
  const auto parameters = model.parameters();
  return parameters.empty() ? 4 : static_cast<uint64_t>(c10::elementSize(parameters.front().scalar_type()));
}

}  // namespace diffuse
