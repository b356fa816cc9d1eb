#include "diffuse/placement/planner.hpp"

#include <algorithm>
#include <map>
#include <numeric>

#include "diffuse/error.hpp"
#include "diffuse/io/inspect.hpp"

namespace diffuse {
namespace {

uint64_t minus(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

uint64_t total_bytes(const std::vector<PlacementUnit>& units) {
  return std::accumulate(units.begin(), units.end(), uint64_t{0},
                         [](uint64_t sum, const PlacementUnit& u) { return sum + u.bytes; });
}

std::string budget_text(const MemoryBudget& budget) {
  std::string out = "{";
  for (size_t i = 0; i < budget.size(); ++i)
    out += (i ? ", " : "") + budget[i].first + ": " + format_bytes(budget[i].second);
  return out + "}";
}

void add_bytes(DevicePlan& plan, const std::string& device, uint64_t bytes) {
  for (auto& [name, sum] : plan.bytes) {
    if (name == device) {
      sum += bytes;
      return;
    }
  }
  plan.bytes.emplace_back(device, bytes);
}

}  // namespace

PlacementStrategy parse_placement_strategy(std::string_view name) {
  if (name == "auto") return PlacementStrategy::Auto;
  if (name == "balanced") return PlacementStrategy::Balanced;
  if (name == "balanced_low_0") return PlacementStrategy::BalancedLow0;
  if (name == "sequential") return PlacementStrategy::Sequential;
  throw Error("device_map '" + std::string(name) +
              "' is not a placement strategy (expected \"auto\", \"balanced\", \"balanced_low_0\" or \"sequential\", "
              "or an explicit map)");
}

std::string_view placement_strategy_name(PlacementStrategy strategy) {
  switch (strategy) {
    case PlacementStrategy::Auto: return "auto";
    case PlacementStrategy::Balanced: return "balanced";
    case PlacementStrategy::BalancedLow0: return "balanced_low_0";
    case PlacementStrategy::Sequential: return "sequential";
  }
  return "?";
}

MemoryBudget balanced_budget(const std::vector<PlacementUnit>& units, const MemoryBudget& budget, bool low_zero) {
  std::vector<size_t> gpus;  // indices into budget, in GPU order
  for (size_t i = 0; i < budget.size(); ++i)
    if (is_gpu_device(budget[i].first) && budget[i].second > 0) gpus.push_back(i);
  if (gpus.size() < 2 || units.empty()) return budget;  // nothing to balance; low_zero needs two GPUs

  const uint64_t total = total_bytes(units);
  uint64_t largest = 0;
  for (const auto& unit : units) largest = std::max(largest, unit.bytes);
  const uint64_t mean = total / units.size();
  // Without the buffer every GPU would get slightly less than its share and the tail would spill over;
  // Accelerate adds 1.25 x the largest unsplittable block (or the mean leaf, if larger).
  const uint64_t buffer = std::max(largest, mean) * 5 / 4;
  const uint64_t per_gpu = total / (gpus.size() - (low_zero ? 1 : 0)) + buffer;

  MemoryBudget out = budget;
  // The last GPU keeps its whole budget, in case the buffer was not enough.
  for (size_t k = 0; k + 1 < gpus.size(); ++k) {
    if (low_zero && k == 0) continue;
    out[gpus[k]].second = std::min(per_gpu, budget[gpus[k]].second);
  }
  if (low_zero) {
    uint64_t others = 0;
    for (size_t k = 1; k < gpus.size(); ++k) others += out[gpus[k]].second;
    out[gpus[0]].second = std::min(minus(total, others), budget[gpus[0]].second);
  }
  return out;
}

DevicePlan plan_model_placement(const std::vector<PlacementUnit>& units, const MemoryBudget& budget,
                                const PlanOptions& options) {
  const std::string& what = options.model;
  if (budget.empty()) throw Error(what + ": max_memory is empty: name at least one device (\"cuda:0\", \"cpu\", \"disk\")");
  size_t gpu_count = 0;
  bool has_cpu = false, has_disk = false;
  for (const auto& [device, bytes] : budget) {
    gpu_count += is_gpu_device(device) ? 1 : 0;
    has_cpu = has_cpu || device == "cpu";
    has_disk = has_disk || device == "disk";
  }
  // GPU 0 runs the units placed on "cpu" and "disk" (the CPU does when there is no GPU); weights move in
  // only when such units can exist.
  const std::string execution_device = gpu_count > 0 ? budget.front().first : "cpu";
  const bool weights_move_in = has_disk || (gpu_count > 0 && has_cpu);
  auto executes = [&](const std::string& device) {
    return is_gpu_device(device) || (device == "cpu" && gpu_count == 0);
  };

  const MemoryBudget limits = options.strategy == PlacementStrategy::Sequential
                                  ? budget
                                  : balanced_budget(units, budget, options.strategy == PlacementStrategy::BalancedLow0);

  DevicePlan plan;
  std::map<std::string, uint64_t> used;
  // The largest unit from each position on: the room an offloaded unit may need when it moves in.
  std::vector<uint64_t> largest_from(units.size() + 1, 0);
  for (size_t i = units.size(); i-- > 0;) largest_from[i] = std::max(largest_from[i + 1], units[i].bytes);

  auto capacity = [&](size_t device_index, size_t unit_index, uint64_t* kept) {
    const auto& [device, budget_bytes] = budget[device_index];
    uint64_t room = limits[device_index].second;
    uint64_t keep = 0;
    if (executes(device)) {
      room = std::min(room, minus(budget_bytes, options.activation_bytes));
      keep += options.activation_bytes;
    }
    if (weights_move_in && device == execution_device) {
      room = minus(room, largest_from[unit_index]);
      keep += largest_from[unit_index];
    }
    if (kept) *kept = keep;
    return room;
  };

  size_t current = 0;
  for (size_t i = 0; i < units.size(); ++i) {
    const PlacementUnit& unit = units[i];
    while (true) {
      if (current == budget.size()) {
        // Nothing fits from here on: say how much is missing and where.
        const std::vector<PlacementUnit> rest(units.begin() + static_cast<std::ptrdiff_t>(i), units.end());
        uint64_t best_room = 0;
        std::string best_device;
        for (size_t d = 0; d < budget.size(); ++d) {
          const uint64_t room = minus(capacity(d, i, nullptr), used[budget[d].first]);
          if (best_device.empty() || room > best_room) best_room = room, best_device = budget[d].first;
        }
        std::string message = what + " does not fit max_memory " + budget_text(budget) + " (" +
                              std::string(placement_strategy_name(options.strategy)) + "): " + format_bytes(total_bytes(rest)) +
                              " more are needed for " + std::to_string(rest.size()) + " unit" +
                              (rest.size() == 1 ? "" : "s") + " with no device, from " + rest.front().name + " (" +
                              format_bytes(unit.bytes) + ") to " + rest.back().name;
        if (unit.bytes > best_room)
          message += "; " + unit.name + " alone is larger than the room left on any device (at most " +
                     format_bytes(best_room) + ", on " + best_device + ")";
        if (options.activation_bytes > 0)
          message += "; " + format_bytes(options.activation_bytes) + " are kept free for activations on each executing device";
        if (weights_move_in)
          message += "; " + execution_device + " keeps room for the largest offloaded unit (" +
                     format_bytes(largest_from[i]) + ")";
        message += ". Raise a budget, or add \"cpu\" or \"disk\" to max_memory";
        throw Error(message);
      }
      const std::string& device = budget[current].first;
      uint64_t kept = 0;
      const uint64_t room = capacity(current, i, &kept);
      if (used[device] + unit.bytes <= room) {
        used[device] += unit.bytes;
        plan.map.set(unit.name, device);
        add_bytes(plan, device, unit.bytes);
        break;
      }
      if (used[device] == 0)
        plan.notes.push_back(what + ": nothing placed on " + device + ": its first unit, " + unit.name + " (" +
                             format_bytes(unit.bytes) + "), needs " + format_bytes(unit.bytes + kept) +
                             " with what is kept free, and the budget there is " +
                             format_bytes(limits[current].second));
      ++current;
    }
  }
  return plan;
}

DevicePlan plan_pipeline_balanced(const std::vector<PlacementUnit>& components, const MemoryBudget& budget) {
  std::vector<std::pair<std::string, uint64_t>> gpus;
  for (const auto& entry : budget)
    if (is_gpu_device(entry.first)) gpus.push_back(entry);
  // Largest budget first (stable, so equal budgets keep GPU order), as diffusers sorts max_memory.
  std::stable_sort(gpus.begin(), gpus.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<size_t> cycle;  // 0, 1, ..., n-1, n-1, ..., 0
  for (size_t k = 0; k < gpus.size(); ++k) cycle.push_back(k);
  for (size_t k = gpus.size(); k-- > 0;) cycle.push_back(k);

  std::vector<size_t> order(components.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return components[a].bytes > components[b].bytes; });

  std::map<std::string, std::string> placed;
  std::map<std::string, uint64_t> remaining;
  for (const auto& [device, bytes] : gpus) remaining[device] = bytes;
  DevicePlan plan;
  size_t turn = 0;
  for (size_t index : order) {
    const PlacementUnit& component = components[index];
    std::string device;
    for (size_t k = 0; k < gpus.size() && device.empty(); ++k) {
      const std::string& candidate = gpus[cycle[(turn + k) % cycle.size()]].first;
      if (component.bytes <= remaining[candidate]) device = candidate;
    }
    if (device.empty()) {
      device = "cpu";
      uint64_t room = 0;
      for (const auto& [gpu, bytes] : remaining) room = std::max(room, bytes);
      plan.notes.push_back(
          gpus.empty() ? component.name + " (" + format_bytes(component.bytes) + ") goes to cpu: max_memory names no GPU"
                       : component.name + " (" + format_bytes(component.bytes) +
                             ") fits on no GPU (the most room left is " + format_bytes(room) + "); it goes to cpu");
    } else {
      remaining[device] -= component.bytes;
      ++turn;
    }
    placed[component.name] = device;
  }
  for (const auto& component : components) {
    plan.map.set(component.name, placed[component.name]);
    add_bytes(plan, placed[component.name], component.bytes);
  }
  return plan;
}

}  // namespace diffuse
