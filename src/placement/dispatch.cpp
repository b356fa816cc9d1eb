#include "diffuse/placement/dispatch.hpp"

#include <ATen/ATen.h>

#include "diffuse/error.hpp"
#include "diffuse/placement/memory_size.hpp"
#include "diffuse/placement/module_hooks.hpp"
#include "diffuse/placement/offloaded_tensors.hpp"

namespace diffuse {
namespace {

// A parameter or buffer of a unit, under its full name in the model (the checkpoint's name).
struct UnitTensor {
  std::string name;
  at::Tensor tensor;  // shares its TensorImpl with the module's own, so set_data changes the module
};

std::vector<UnitTensor> unit_tensors(const ModelUnit& unit) {
  std::vector<UnitTensor> out;
  for (auto& p : unit.module->named_parameters()) out.push_back({unit.name + "." + p.key(), p.value()});
  for (auto& b : unit.module->named_buffers()) out.push_back({unit.name + "." + b.key(), b.value()});
  return out;
}

// A unit whose weights live where it runs: only its inputs move.
class ExecuteOnHook : public ModuleHook {
 public:
  explicit ExecuteOnHook(c10::Device device) : device_(device) {}
  c10::Device pre_forward() override { return device_; }

 private:
  c10::Device device_;
};

// A unit whose weights stay in CPU memory (pinned home copies) and are copied in for each run.
class CpuOffloadHook : public ModuleHook {
 public:
  CpuOffloadHook(c10::Device device, const std::vector<UnitTensor>& tensors, bool pin)
      : weights_(plain_tensors(tensors), device, pin) {}
  c10::Device pre_forward() override {
    weights_.bring_in();
    return weights_.device();
  }
  void post_forward() noexcept override { weights_.drop(); }
  void detach() override { weights_.drop(); }

 private:
  static std::vector<at::Tensor> plain_tensors(const std::vector<UnitTensor>& tensors) {
    std::vector<at::Tensor> out;
    for (const auto& t : tensors) out.push_back(t.tensor);
    return out;
  }
  OffloadedTensors weights_;
};

// A unit whose weights are read from the checkpoint's mmap for each run and dropped after.
class DiskOffloadHook : public ModuleHook {
 public:
  DiskOffloadHook(c10::Device device, Checkpoint checkpoint, std::vector<UnitTensor> tensors)
      : device_(device), checkpoint_(std::move(checkpoint)), tensors_(std::move(tensors)) {
    at::NoGradGuard no_grad;
    for (auto& t : tensors_) {
      // An empty placeholder keeps the dtype the weights are read in (float32 for keep_in_float32 ones).
      placeholders_.push_back(at::empty({0}, t.tensor.options().device(c10::kCPU)));
      t.tensor.set_data(placeholders_.back());
    }
  }
  c10::Device pre_forward() override { return load(device_); }
  void post_forward() noexcept override {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < tensors_.size(); ++i) tensors_[i].tensor.set_data(placeholders_[i]);
  }
  void detach() override { load(c10::kCPU); }

 private:
  c10::Device load(c10::Device device) {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < tensors_.size(); ++i)
      tensors_[i].tensor.set_data(checkpoint_.load(tensors_[i].name, placeholders_[i].scalar_type(), device));
    return device;
  }
  c10::Device device_;
  Checkpoint checkpoint_;
  std::vector<UnitTensor> tensors_;
  std::vector<at::Tensor> placeholders_;
};

void set_hooks_everywhere(torch::nn::Module& model, const std::shared_ptr<ModuleHooks>& hooks) {
  if (auto* hooked = dynamic_cast<HookedModule*>(&model)) hooked->set_hooks(hooks);
  for (const auto& module : model.modules(/*include_self=*/false))
    if (auto* hooked = dynamic_cast<HookedModule*>(module.get())) hooked->set_hooks(hooks);
}

}  // namespace

DeviceMap resolve_device_map(const DeviceMap& map, const std::vector<ModelUnit>& units, const std::string& model_name) {
  for (const auto& [name, device] : map.entries()) {
    bool covers_a_unit = false;
    for (const auto& unit : units) {
      if (name_is_under(unit.name, name)) covers_a_unit = true;
      if (name != unit.name && name_is_under(name, unit.name))
        throw Error(model_name + ": device map entry '" + name + "' is inside unit '" + unit.name +
                    "': units are placed whole (blocks are never split); map '" + unit.name + "' instead");
    }
    if (!covers_a_unit) {
      std::string known;
      for (size_t i = 0; i < units.size() && i < 8; ++i) known += (i ? ", " : "") + units[i].name;
      throw Error(model_name + ": device map entry '" + name + "' names no unit of the model (its units are " + known +
                  (units.size() > 8 ? ", ...)" : ")"));
    }
  }
  DeviceMap resolved;
  std::vector<std::string> uncovered;
  for (const auto& unit : units) {
    const std::string* device = map.device_of(unit.name);
    if (device == nullptr)
      uncovered.push_back(unit.name);
    else
      resolved.set(unit.name, *device);
  }
  if (!uncovered.empty()) {
    std::string names;
    for (size_t i = 0; i < uncovered.size() && i < 8; ++i) names += (i ? ", " : "") + uncovered[i];
    throw Error(model_name + ": the device map leaves " + std::to_string(uncovered.size()) + " unit" +
                (uncovered.size() == 1 ? "" : "s") + " without a device: " + names +
                (uncovered.size() > 8 ? ", ..." : "") + " (an entry \"\" covers everything)");
  }
  return resolved;
}

void dispatch_model(torch::nn::Module& model, const DeviceMap& map, const DispatchOptions& options) {
  remove_hooks(model);
  const std::string model_name = model.name();
  const std::vector<ModelUnit> units = model_units(model);
  const DeviceMap resolved = resolve_device_map(map, units, model_name);

  c10::Device offload_device(c10::kCPU);
  if (options.execution_device) {
    offload_device = *options.execution_device;
  } else {
    for (const auto& device : resolved.devices()) {
      if (is_gpu_device(device)) {
        offload_device = c10::Device(device);
        break;
      }
    }
  }
  auto execution_of = [&](const std::string& device) {
    return is_gpu_device(device) ? c10::Device(device) : offload_device;
  };
  if (!units.empty() && resolved.devices().size() > 0) {
    for (const auto& device : resolved.devices())
      if (device == "disk" && !options.checkpoint)
        throw Error(model_name + ": the device map puts units on \"disk\", which needs the checkpoint they are read from");
  }

  const c10::Device entry = units.empty() ? offload_device : execution_of(resolved.at(units.front().name));
  auto hooks = std::make_shared<ModuleHooks>(resolved, entry, options.origin);
  at::NoGradGuard no_grad;
  for (const ModelUnit& unit : units) {
    const std::string& device = resolved.at(unit.name);
    std::vector<UnitTensor> tensors = unit_tensors(unit);
    std::shared_ptr<ModuleHook> hook;
    if (device == "disk") {
      for (const auto& t : tensors)
        if (!options.checkpoint->contains(t.name))
          throw Error(model_name + ": unit '" + unit.name + "' is mapped to \"disk\" but " +
                      options.checkpoint->source().string() + " has no tensor '" + t.name + "'");
      hook = std::make_shared<DiskOffloadHook>(offload_device, *options.checkpoint, std::move(tensors));
    } else if (device == "cpu" && !offload_device.is_cpu()) {
      hook = std::make_shared<CpuOffloadHook>(offload_device, tensors, options.pin_memory);
    } else {
      const c10::Device target = device == "cpu" ? c10::Device(c10::kCPU) : c10::Device(device);
      for (auto& t : tensors)
        if (t.tensor.device() != target) t.tensor.set_data(t.tensor.to(target));
      hook = std::make_shared<ExecuteOnHook>(target);
    }
    hooks->add(*unit.module, std::move(hook));
  }
  set_hooks_everywhere(model, hooks);
}

void remove_hooks(torch::nn::Module& model) {
  auto* hooked = dynamic_cast<HookedModule*>(&model);
  if (hooked == nullptr || !hooked->hooks()) return;
  hooked->hooks()->detach_all();
  set_hooks_everywhere(model, nullptr);
}

}  // namespace diffuse
