#pragma once
// Loading a checkpoint into a module by name. Modules register their children under diffusers' and
// transformers' names, so no mapping table is needed: every tensor in the checkpoint must be consumed
// and every parameter filled, or the error lists the names on each side.

#include <ATen/core/TensorBody.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/io/checkpoint.hpp"
#include "diffuse/io/configs.hpp"

namespace diffuse {

struct WeightLoadOptions {
  c10::ScalarType dtype = c10::kFloat;  // floating-point tensors are converted to it
  c10::Device device = c10::kCPU;
  // Checkpoint names that are copies of a tied weight the module holds once, e.g. T5's
  // "encoder.embed_tokens.weight" -> "shared.weight". Such a name may be present or absent.
  std::map<std::string, std::string> tied_aliases;
  // Checkpoint names starting with one of these belong to parts of the saved model that this module
  // does not implement (Qwen2.5-VL's "visual." tower and "lm_head." when only its language model runs):
  // they are never read, and not reported as unexpected.
  std::vector<std::string> ignored_prefixes;
  // Parameters whose name contains one of these parts stay in float32 whatever `dtype` says
  // (transformers' _keep_in_fp32_modules, e.g. T5's "wo" under float16).
  std::vector<std::string> keep_in_float32;
  // Per-tensor placement (a device map): the device of each tensor by name, or nullopt to leave it
  // unread (a unit on "disk", read by its hook when it runs). Unset: every tensor goes to `device`.
  std::function<std::optional<c10::Device>(const std::string& name)> device_of;
};

// Whether `name` (a dotted parameter name) has one of `parts` as a whole component: "wo" matches
// "encoder.block.0.layer.1.DenseReluDense.wo.weight", not "...wo_1...".
bool keeps_float32(const std::string& name, const std::vector<std::string>& parts);

// Whether `name` starts with one of `prefixes` (WeightLoadOptions::ignored_prefixes).
bool has_ignored_prefix(const std::string& name, const std::vector<std::string>& prefixes);

// Replaces every parameter and buffer of `module` with the checkpoint's tensor of the same name,
// converted and moved as `options` say. Throws diffuse::Error listing missing names, unexpected names
// and shape mismatches (with both shapes) before touching the module.
void load_weights(torch::nn::Module& module, const Checkpoint& checkpoint, const WeightLoadOptions& options);

// The common way a model folder loads: `Config::from_file(folder/config.json)`, the model built from
// it with uninitialized parameters in options.dtype on options.device, then the folder's weights
// swapped in by load_weights. Returns the model in eval mode.
// Throws diffuse::Error naming the config file and key when the checkpoint holds another number of
// blocks than the config asks for (before any block is built: a corrupt count can be a million).
void check_block_counts(const std::vector<BlockCount>& counts, const Checkpoint& checkpoint,
                        const std::filesystem::path& config_file);

template <typename Model, typename Config>
Model load_pretrained(const std::filesystem::path& folder, const WeightLoadOptions& options) {
  const Config config = Config::from_file(folder / "config.json");
  const Checkpoint checkpoint = Checkpoint::open(folder);
  if constexpr (requires { config.block_counts(); })
    check_block_counts(config.block_counts(), checkpoint, folder / "config.json");
  Model model(config, at::TensorOptions().dtype(options.dtype).device(options.device));
  load_weights(*model, checkpoint, options);
  model->eval();
  return model;
}

// Moves every parameter and buffer of `module` to `device` and floating-point ones to `dtype`,
// keeping those matched by `keep_in_float32` in float32.
void convert_module(torch::nn::Module& module, c10::ScalarType dtype, c10::Device device,
                    const std::vector<std::string>& keep_in_float32 = {});

// Total bytes of parameters and buffers.
uint64_t module_bytes(const torch::nn::Module& module);

}  // namespace diffuse
