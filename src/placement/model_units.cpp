#include "diffuse/placement/model_units.hpp"

#include <algorithm>
#include <set>

#include "diffuse/error.hpp"
#include "diffuse/placement/placeable_model.hpp"

namespace diffuse {
namespace {

// The model's declaration of what placement may split; anything else is refused with its name.
const PlaceableModel& placeable(const torch::nn::Module& model) {
  const auto* placeable = dynamic_cast<const PlaceableModel*>(&model);
  if (placeable == nullptr)
    throw Error("placement: " + model.name() +
                " is not a model that diffuse can place (a model declares its units by deriving from PlaceableModel)");
  return *placeable;
}

uint64_t element_bytes(c10::ScalarType type) { return static_cast<uint64_t>(c10::elementSize(type)); }

}  // namespace

std::vector<ModelUnit> model_units(const torch::nn::Module& model, const std::vector<std::string>& keep_in_float32) {
  const std::vector<std::string> containers = placeable(model).unit_containers();
  auto is_container = [&](const std::string& name) {
    return std::find(containers.begin(), containers.end(), name) != containers.end();
  };
  std::vector<ModelUnit> units;
  std::function<void(const torch::nn::Module&, const std::string&)> visit = [&](const torch::nn::Module& module,
                                                                                const std::string& prefix) {
    if (!module.named_parameters(/*recurse=*/false).is_empty() || !module.named_buffers(/*recurse=*/false).is_empty())
      throw Error("placement: container '" + prefix + "' of " + model.name() + " holds tensors of its own");
    for (const auto& child : module.named_children()) {
      const std::string name = prefix.empty() ? child.key() : prefix + "." + child.key();
      if (is_container(name)) {
        visit(*child.value(), name);
        continue;
      }
      ModelUnit unit{name, child.value(), 0};
      for (const auto& p : child.value()->named_parameters()) {
        const uint64_t size = keeps_float32(name + "." + p.key(), keep_in_float32) && c10::isFloatingType(p->scalar_type())
                                  ? 4
                                  : element_bytes(p->scalar_type());
        unit.bytes += static_cast<uint64_t>(p->numel()) * size;
      }
      for (const auto& b : child.value()->named_buffers())
        unit.bytes += static_cast<uint64_t>(b->numel()) * element_bytes(b->scalar_type());
      units.push_back(std::move(unit));
    }
  };
  visit(model, "");
  return units;
}

std::vector<PlacementUnit> placement_units(const std::vector<ModelUnit>& units) {
  std::vector<PlacementUnit> out;
  out.reserve(units.size());
  for (const auto& unit : units) out.push_back({unit.name, unit.bytes});
  return out;
}

uint64_t activation_estimate(const torch::nn::Module& model) { return placeable(model).activation_estimate(); }

uint64_t checkpoint_bytes(const Checkpoint& checkpoint, c10::ScalarType dtype,
                          const std::vector<std::string>& keep_in_float32,
                          const std::map<std::string, std::string>& tied_aliases,
                          const std::vector<std::string>& ignored_prefixes) {
  uint64_t total = 0;
  for (const TensorInfo& info : checkpoint.tensors()) {
    if (has_ignored_prefix(info.name, ignored_prefixes)) continue;
    auto alias = tied_aliases.find(info.name);
    if (alias != tied_aliases.end() && checkpoint.contains(alias->second)) continue;
    const c10::ScalarType stored = safetensors_scalar_type(info.dtype);
    if (!c10::isFloatingType(stored)) {
      total += info.byte_size();
      continue;
    }
    const c10::ScalarType target = keeps_float32(info.name, keep_in_float32) ? c10::kFloat : dtype;
    total += static_cast<uint64_t>(info.numel()) * element_bytes(target);
  }
  return total;
}

}  // namespace diffuse
