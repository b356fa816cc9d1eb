#pragma once
// A pipeline's parts, by model_index.json's names: models (any torch module), tokenizers and the
// scheduler, each held by shared pointer so that one loaded model can be handed to several pipelines
// (as diffusers' `FluxPipeline.from_pretrained(dir, transformer=transformer)`):
//
//   auto transformer = load_model<FluxTransformer2DModel>(dir / "transformer", {.device_map = "auto"});
//   auto pipe = FluxPipeline::from_pretrained(dir, {.components = {{"transformer", transformer}}});
//   ClipTokenizer& tokenizer = pipe.components().get<ClipTokenizer>("tokenizer");

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <any>
#include <map>
#include <memory>
#include <string>
#include <typeinfo>

#include "diffuse/error.hpp"

namespace diffuse {

class Component {
 public:
  Component() = default;
  // A model: a TORCH_MODULE holder (ClipTextModel, UNet2DConditionModel, ...).
  template <typename Impl>
  Component(torch::nn::ModuleHolder<Impl> model) : model_(model.ptr()), value_(model.ptr()) {}
  // Anything else (a tokenizer, a scheduler), shared.
  template <typename T>
  static Component of(std::shared_ptr<T> object) {
    Component component;
    component.value_ = std::move(object);
    return component;
  }

  bool empty() const { return !value_.has_value(); }
  bool is_model() const { return model_ != nullptr; }
  // The model as a torch module (nullptr for a tokenizer or scheduler).
  const std::shared_ptr<torch::nn::Module>& module() const { return model_; }

  // The model as its holder type; throws diffuse::Error naming `name` when it is another class.
  template <typename Holder>
  Holder model(const std::string& name) const {
    auto impl = std::dynamic_pointer_cast<typename Holder::ContainedType>(model_);
    if (!impl) throw Error("component '" + name + "' is not a " + typeid(typename Holder::ContainedType).name());
    return Holder(impl);
  }
  // A non-model component by its type; throws diffuse::Error naming `name` when it is another type.
  template <typename T>
  std::shared_ptr<T> object(const std::string& name) const {
    if (const auto* held = std::any_cast<std::shared_ptr<T>>(&value_)) return *held;
    throw Error("component '" + name + "' is not a " + typeid(T).name());
  }

 private:
  std::shared_ptr<torch::nn::Module> model_;
  std::any value_;
};

// Components by model_index.json name; an absent name is an absent component.
class ComponentMap {
 public:
  ComponentMap() = default;
  ComponentMap(std::initializer_list<std::pair<const std::string, Component>> entries) : entries_(entries) {}

  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  void set(const std::string& name, Component component) { entries_[name] = std::move(component); }
  void erase(const std::string& name) { entries_.erase(name); }
  const Component& at(const std::string& name) const;

  template <typename Holder>
  Holder model(const std::string& name) const { return at(name).template model<Holder>(name); }
  template <typename T>
  T& get(const std::string& name) const { return *at(name).template object<T>(name); }

  const std::map<std::string, Component>& entries() const { return entries_; }

 private:
  std::map<std::string, Component> entries_;
};

}  // namespace diffuse
