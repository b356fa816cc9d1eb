#include "diffuse/placement/module_hooks.hpp"

namespace diffuse {

ModuleHooks::ModuleHooks(DeviceMap map, c10::Device execution_device, std::string origin)
    : map_(std::move(map)), execution_device_(execution_device), origin_(std::move(origin)) {}

void ModuleHooks::add(const torch::nn::Module& unit, std::shared_ptr<ModuleHook> hook) {
  hooks_[&unit] = std::move(hook);
}

void ModuleHooks::detach_all() {
  for (auto& [unit, hook] : hooks_) hook->detach();
}

const ModuleHooks* hooks_of(const torch::nn::Module& model) {
  const auto* hooked = dynamic_cast<const HookedModule*>(&model);
  return hooked ? hooked->hooks().get() : nullptr;
}

c10::Device execution_device(const torch::nn::Module& model) {
  if (const ModuleHooks* hooks = hooks_of(model)) return hooks->execution_device();
  const auto parameters = model.parameters();
  return parameters.empty() ? c10::Device(c10::kCPU) : parameters.front().device();
}

}  // namespace diffuse
