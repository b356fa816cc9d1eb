#pragma once
// Applying a DeviceMap to a model: the only part of placement that touches devices (Accelerate's
// dispatch_model). Each unit gets a hook (placement/module_hooks.hpp):
// - on a GPU: its weights live there, and its inputs are moved there when it runs;
// - on "cpu": its weights stay in CPU memory (pinned when they run on CUDA) and are copied to the
//   execution device when the unit runs, then released (placement/offloaded_tensors.hpp);
// - on "disk": its weights are dropped and read from the checkpoint's safetensors mmap, straight to the
//   execution device, when the unit runs, then released.
// The execution device of "cpu" and "disk" units is the map's first GPU (the CPU without a GPU).
// enable_sequential_cpu_offload is this with every unit on "cpu" and the GPU as execution device.

#include <c10/core/Device.h>
#include <torch/nn/module.h>

#include <optional>
#include <string>
#include <vector>

#include "diffuse/io/checkpoint.hpp"
#include "diffuse/placement/device_map.hpp"
#include "diffuse/placement/model_units.hpp"

namespace diffuse {

struct DispatchOptions {
  // Runs the units placed on "cpu" and "disk". Default: the map's first GPU, else the CPU.
  std::optional<c10::Device> execution_device;
  // Where "disk" units are read from when they run: the model's own checkpoint. Needed when the map
  // has "disk".
  std::optional<Checkpoint> checkpoint;
  // CPU weights of units that run on CUDA are pinned, so that copying them in is asynchronous.
  bool pin_memory = true;
  // Recorded in the hooks: "device_map" or "sequential_offload".
  std::string origin = "device_map";
};

// `map` made complete for `units`: every unit gets the device of the longest entry that covers it
// ("" covers the whole model, "transformer_blocks" every double block). Throws diffuse::Error naming
// the entry for a name that is no unit or container of the model, for a name inside a unit (blocks are
// never split), and for units that no entry covers.
DeviceMap resolve_device_map(const DeviceMap& map, const std::vector<ModelUnit>& units,
                             const std::string& model_name = "model");

// Places `model` as `map` says (resolved as above) and sets its hooks, replacing hooks it had.
void dispatch_model(torch::nn::Module& model, const DeviceMap& map, const DispatchOptions& options = {});

// Takes a model's hooks off. Weights stay where they are; units on "disk" are read back to the CPU
// first, so the model is whole again. Nothing happens to a model without hooks.
void remove_hooks(torch::nn::Module& model);

}  // namespace diffuse
