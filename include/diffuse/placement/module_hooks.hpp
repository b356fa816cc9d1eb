#pragma once
// The hook points of placement inside models. A model runs its units (blocks, and the small modules
// around them) through HookedModule::forward_unit / run_unit; with no hooks set that is a plain call
// (one branch). dispatch_model (placement/dispatch.hpp) sets hooks that, for each unit, bring its
// weights to its execution device before it runs, release them after, and move its inputs there:
// Accelerate's AlignDevicesHook, one per unit. Activations so follow their block's device.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "diffuse/placement/device_map.hpp"

namespace diffuse {

class ModuleHook {
 public:
  virtual ~ModuleHook() = default;
  // Before the unit runs: makes its weights available where it executes, and returns that device.
  virtual c10::Device pre_forward() = 0;
  // After it ran, also when it threw: releases what pre_forward brought in.
  virtual void post_forward() noexcept {}
  // When the hooks are removed: leaves the weights resident (disk weights are read to the CPU).
  virtual void detach() {}
};

// One model's hooks, by unit module, with the map they apply.
class ModuleHooks {
 public:
  // `origin` says who set them: "device_map" or "sequential_offload".
  ModuleHooks(DeviceMap map, c10::Device execution_device, std::string origin);

  void add(const torch::nn::Module& unit, std::shared_ptr<ModuleHook> hook);
  ModuleHook* find(const torch::nn::Module& unit) const {
    auto it = hooks_.find(&unit);
    return it == hooks_.end() ? nullptr : it->second.get();
  }
  void detach_all();

  const DeviceMap& device_map() const { return map_; }
  // Where the model's inputs go: the execution device of its first unit.
  c10::Device execution_device() const { return execution_device_; }
  const std::string& origin() const { return origin_; }

 private:
  std::unordered_map<const torch::nn::Module*, std::shared_ptr<ModuleHook>> hooks_;
  DeviceMap map_;
  c10::Device execution_device_;
  std::string origin_;
};

// An input moved to a unit's device; undefined tensors stay undefined. Models add overloads for their
// own input structs (found by argument-dependent lookup).
inline at::Tensor to_unit_device(const at::Tensor& input, c10::Device device) {
  return input.defined() ? input.to(device) : input;
}
// A list of inputs (a UNet up block's skip connections) moved together. Declared here rather than
// beside a model: argument-dependent lookup does not look in diffuse for std::vector<at::Tensor>.
inline std::vector<at::Tensor> to_unit_device(const std::vector<at::Tensor>& inputs, c10::Device device) {
  std::vector<at::Tensor> moved;
  moved.reserve(inputs.size());
  for (const at::Tensor& input : inputs) moved.push_back(to_unit_device(input, device));
  return moved;
}

// Base of every module whose forward runs units: the models, and the stacks inside them that loop over
// blocks. All of a model's HookedModules share one ModuleHooks.
class HookedModule {
 public:
  virtual ~HookedModule() = default;

  // The placement this model runs under (unit -> device); empty when it runs where its weights are.
  DeviceMap device_map() const { return hooks_ ? hooks_->device_map() : DeviceMap(); }
  const std::shared_ptr<ModuleHooks>& hooks() const { return hooks_; }
  // Set by dispatch_model and remove_hooks on every HookedModule of a model.
  void set_hooks(std::shared_ptr<ModuleHooks> hooks) { hooks_ = std::move(hooks); }

 protected:
  // body(inputs...) as `unit`: with a hook for it, the unit's weights are brought in first, the inputs
  // are moved to its device, and the weights are released after.
  template <typename Body, typename... Inputs>
  auto run_unit(const torch::nn::Module& unit, Body&& body, const Inputs&... inputs) {
    ModuleHook* hook = hooks_ ? hooks_->find(unit) : nullptr;
    if (hook == nullptr) return body(inputs...);
    [[maybe_unused]] const c10::Device device = hook->pre_forward();  // unused when there are no inputs
    const ReleaseAfter release{hook};
    return body(to_unit_device(inputs, device)...);
  }
  // unit.forward(inputs...) as `unit`.
  template <typename Unit, typename... Inputs>
  auto forward_unit(Unit& unit, const Inputs&... inputs) {
    return run_unit(unit, [&unit](const auto&... in) { return unit.forward(in...); }, inputs...);
  }

 private:
  struct ReleaseAfter {
    ModuleHook* hook;
    ~ReleaseAfter() { hook->post_forward(); }
  };
  std::shared_ptr<ModuleHooks> hooks_;
};

// Where a model's inputs should go: its hooks' execution device when it has hooks, else the device of
// its first parameter (the CPU for a model without parameters).
c10::Device execution_device(const torch::nn::Module& model);

// The hooks of a model (nullptr when it has none or is no HookedModule).
const ModuleHooks* hooks_of(const torch::nn::Module& model);

}  // namespace diffuse
