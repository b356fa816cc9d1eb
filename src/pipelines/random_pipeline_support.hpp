#pragma once
// Internal: what the random pipeline writers (random_pipeline.cpp for FLUX.1 and SD,
// random_qwenimage_pipeline.cpp for Qwen-Image) share.

#include <torch/nn/module.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "diffuse/pipelines/random_pipeline.hpp"

namespace diffuse::random_detail {

// Writes `value` as indented JSON, replacing the file atomically.
void write_json(const std::filesystem::path& path, const nlohmann::json& value);

// Fills `module`'s parameters with random values from `seed` (init_random_parameters) and writes them
// with save_weights.
void write_weights(torch::nn::Module& module, const std::filesystem::path& folder, const std::string& base_name,
                   const RandomPipelineOptions& options, uint64_t seed);

// Writes `module`'s parameters under diffusers' file name (`base_name`.safetensors, or shards with an
// index past options.max_shard_bytes).
void save_weights(torch::nn::Module& module, const std::filesystem::path& folder, const std::string& base_name,
                  const RandomPipelineOptions& options);

}  // namespace diffuse::random_detail

namespace diffuse {

// "qwen-image-tiny" or "qwen-image" (random_qwenimage_pipeline.cpp).
void write_random_qwenimage_pipeline(const std::filesystem::path& folder, const RandomPipelineOptions& options);

}  // namespace diffuse
