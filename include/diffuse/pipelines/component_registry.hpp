#pragma once
// How each component class of model_index.json loads, by its `_class_name` (diffusers' and
// transformers' names: "CLIPTextModel", "UNet2DConditionModel", "CLIPTokenizer", "PNDMScheduler", ...).
// The pipeline base loads every component through this table, so a new model is one registration:
//
//   register_component_class("MyTransformer2DModel", model_component_class<MyTransformer2DModel>());
//
// Every scheduler class of schedulers/scheduler.hpp's registry loads as a scheduler without a line here.

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "diffuse/pipelines/components.hpp"
#include "diffuse/placement/load_model.hpp"
#include "diffuse/placement/model_units.hpp"

namespace diffuse {

// What planning a model's device map needs, from its config alone (pipelines and programs that show
// a plan without loading the model).
struct ModelPlacementSizes {
  std::vector<PlacementUnit> units;  // in execution order, sized in the dtype asked for
  uint64_t activation_bytes = 0;     // the model's activation_estimate
};

struct ComponentClass {
  enum class Kind { Model, Tokenizer, Scheduler };
  Kind kind = Kind::Model;
  // Reads the component from its folder; models with the options' dtype and device or device map.
  std::function<Component(const std::filesystem::path& folder, const ModelLoadOptions& options)> load;
  // Models: the bytes their weights take once loaded in `dtype`, from the safetensors headers alone
  // (what device_map "balanced" deals out).
  std::function<uint64_t(const std::filesystem::path& folder, c10::ScalarType dtype)> weight_bytes;
  // Models: their placement units and activation estimate in `dtype`, from config.json alone (the
  // model is built on the meta device: no memory is taken and no weight is read).
  std::function<ModelPlacementSizes(const std::filesystem::path& folder, c10::ScalarType dtype)> placement_sizes;
  // Tokenizers: how many ids they produce (the largest + 1); text encoders: how many their token
  // embedding holds. Unset for the others. The pipeline checks each tokenizer against its encoder.
  std::function<int64_t(const Component& component)> vocab_size;
};

// Adds or replaces a class.
void register_component_class(const std::string& class_name, ComponentClass component_class);
// nullptr when no class of that name is registered.
const ComponentClass* find_component_class(const std::string& class_name);
std::vector<std::string> component_class_names();

// The entry of a model that load_model<Model> loads (placement/load_model.hpp).
template <typename Model>
ComponentClass model_component_class() {
  ComponentClass c;
  c.kind = ComponentClass::Kind::Model;
  c.load = [](const std::filesystem::path& folder, const ModelLoadOptions& options) {
    return Component(load_model<Model>(folder, options));
  };
  c.weight_bytes = [](const std::filesystem::path& folder, c10::ScalarType dtype) {
    const WeightLoadOptions weights = model_weight_load_options<Model>(dtype);
    return checkpoint_bytes(Checkpoint::open(folder), dtype, weights.keep_in_float32, weights.tied_aliases,
                            weights.ignored_prefixes);
  };
  c.placement_sizes = [](const std::filesystem::path& folder, c10::ScalarType dtype) {
    using Config = typename Model::ContainedType::Config;
    const Model meta(Config::from_file(folder / "config.json"), at::TensorOptions().dtype(dtype).device(at::kMeta));
    return ModelPlacementSizes{placement_units(model_units(*meta, model_weight_load_options<Model>(dtype).keep_in_float32)),
                               activation_estimate(*meta)};
  };
  using Impl = typename Model::ContainedType;
  if constexpr (requires(const Impl& m) { m.config().vocab_size; }) {
    c.vocab_size = [](const Component& component) {
      return static_cast<int64_t>(component.model<Model>("text encoder")->config().vocab_size);
    };
  }
  return c;
}

// The entry of a tokenizer with a `static Tokenizer from_pretrained(folder)`.
template <typename Tokenizer>
ComponentClass tokenizer_component_class() {
  ComponentClass c;
  c.kind = ComponentClass::Kind::Tokenizer;
  c.load = [](const std::filesystem::path& folder, const ModelLoadOptions&) {
    return Component::of(std::make_shared<Tokenizer>(Tokenizer::from_pretrained(folder)));
  };
  c.vocab_size = [](const Component& component) { return component.object<Tokenizer>("tokenizer")->vocab_size(); };
  return c;
}

}  // namespace diffuse
