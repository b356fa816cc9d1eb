#pragma once
// Planning a placement is a pure function: unit sizes (in execution order), budgets per device and a
// strategy in, a DeviceMap out. Nothing here touches a device, so every case is tested with made-up
// devices and sizes. The semantics are Accelerate's (infer_auto_device_map, get_balanced_memory) for a
// model, and diffusers' (device_map="balanced") for a pipeline.
//
//   auto plan = plan_model_placement(units, parse_max_memory({{"cuda:0", "16GB"}, {"cuda:1", "16GB"}}),
//                                    {.strategy = PlacementStrategy::Auto, .model = "transformer"});
//   std::cout << plan.map.to_json();   // {"time_text_embed": "cuda:0", ..., "proj_out": "cuda:1"}

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "diffuse/placement/device_map.hpp"
#include "diffuse/placement/memory_size.hpp"

namespace diffuse {

// A part that is placed whole: a block (never split), a small top-level module, or a pipeline component.
struct PlacementUnit {
  std::string name;
  uint64_t bytes = 0;  // its weights, in the dtype they will have
};

enum class PlacementStrategy {
  // Accelerate's "auto", which is "balanced": GPU budgets are first lowered to an even share of the model
  // (plus a buffer of 1.25 x the largest unit), so the model spreads over every GPU; then units fill the
  // devices in order.
  Auto,
  Balanced,
  // As Balanced, but GPU 0 gets as little as possible (it is left for other work).
  BalancedLow0,
  // Units fill GPU 0 to its budget, then GPU 1, ..., then "cpu", then "disk".
  Sequential,
};

// "auto", "balanced", "balanced_low_0", "sequential"; throws diffuse::Error listing them for anything else.
PlacementStrategy parse_placement_strategy(std::string_view name);
std::string_view placement_strategy_name(PlacementStrategy strategy);

struct PlanOptions {
  PlacementStrategy strategy = PlacementStrategy::Auto;
  // Kept free for the largest unit's activations on every device that executes units: each GPU, or the
  // CPU when there is no GPU.
  uint64_t activation_bytes = 0;
  // What is being placed ("transformer"), for errors and notes.
  std::string model = "model";
};

struct DevicePlan {
  DeviceMap map;                                         // unit -> device, every unit, in order
  std::vector<std::pair<std::string, uint64_t>> bytes;   // weight bytes per device that got units
  std::vector<std::string> notes;                        // what a log should say (devices left empty, ...)
};

// Places `units` (in the order the model runs them) over `budget`'s devices.
// - The devices are filled in order (GPUs, then "cpu", then "disk"); a unit that does not fit on the
//   current device goes to the next one, and so do all units after it (a device is never revisited).
// - When weights can move in at run time (units may land on "cpu" while there is a GPU, or on "disk"),
//   the execution device (GPU 0, or the CPU without a GPU) keeps room for the largest remaining unit.
// - Every executing device keeps options.activation_bytes free.
// - Auto, Balanced and BalancedLow0 first lower the GPU budgets as balanced_budget does.
// Throws diffuse::Error when the units do not fit: it says how many bytes are missing, which units have
// no device, and what was kept free.
DevicePlan plan_model_placement(const std::vector<PlacementUnit>& units, const MemoryBudget& budget,
                                const PlanOptions& options);

// Accelerate's get_balanced_memory: with two or more GPUs, every GPU but the last gets at most
// total / n + 1.25 x max(largest unit, mean unit); with low_zero, n excludes GPU 0 and GPU 0 gets only
// what the other GPUs' budgets cannot hold. Budgets of "cpu" and "disk", and of a single GPU, are kept.
MemoryBudget balanced_budget(const std::vector<PlacementUnit>& units, const MemoryBudget& budget, bool low_zero);

// diffusers' pipeline-level device_map="balanced": whole components, largest first, dealt over the GPUs
// of `budget` (largest budget first) in the order 0, 1, ..., n-1, n-1, ..., 0, 0, 1, ... so the load
// is even. A component that does not fit its turn's GPU goes to the next GPU that holds it (diffusers
// sends it to the CPU at once); one that fits no GPU's remaining budget goes to "cpu", with a note.
// "cpu" and "disk" budgets are ignored, and a GPU absent from `budget` gets nothing. The map lists the
// components in their given order.
DevicePlan plan_pipeline_balanced(const std::vector<PlacementUnit>& components, const MemoryBudget& budget);

}  // namespace diffuse
