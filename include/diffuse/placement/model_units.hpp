#pragma once
// A model as placement sees it: units in the order forward runs them, each placed whole. Which modules
// are units is the model's declaration (placement/placeable_model.hpp); e.g. FluxTransformer2DModel's
// are time_text_embed, context_embedder, x_embedder, transformer_blocks.N, single_transformer_blocks.N,
// norm_out and proj_out.
// Sizes come from the parameters' shapes: a model built from its config with uninitialized parameters
// has them without a weight being read.

#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/models/weights.hpp"

#include "diffuse/io/checkpoint.hpp"
#include "diffuse/placement/planner.hpp"

namespace diffuse {

struct ModelUnit {
  std::string name;                           // "transformer_blocks.3"
  std::shared_ptr<torch::nn::Module> module;
  uint64_t bytes = 0;                         // parameters and buffers
};

// The units of a PlaceableModel, in execution order. Parameters named by `keep_in_float32`
// (as WeightLoadOptions names them) count 4 bytes per element whatever their dtype now. Throws
// diffuse::Error for a module that is not a PlaceableModel.
std::vector<ModelUnit> model_units(const torch::nn::Module& model, const std::vector<std::string>& keep_in_float32 = {});

// Names and sizes only, for the planner.
std::vector<PlacementUnit> placement_units(const std::vector<ModelUnit>& units);

// The model's PlaceableModel::activation_estimate: what a device that runs its units keeps free.
uint64_t activation_estimate(const torch::nn::Module& model);

// The bytes a checkpoint's weights take once loaded in `dtype` (floating-point tensors converted, those
// named by keep_in_float32 in float32), read from the headers alone. Names in `tied_aliases` that are
// copies of another stored tensor are not counted twice; names starting with one of `ignored_prefixes`
// (parts of the checkpoint the model does not load) are not counted.
uint64_t checkpoint_bytes(const Checkpoint& checkpoint, c10::ScalarType dtype,
                          const std::vector<std::string>& keep_in_float32 = {},
                          const std::map<std::string, std::string>& tied_aliases = {},
                          const std::vector<std::string>& ignored_prefixes = {});

}  // namespace diffuse
