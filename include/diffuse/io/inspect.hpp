#pragma once
// What a pipeline or model folder holds, read from model_index.json, config.json and safetensors
// headers only: no weight is loaded. The inspect program prints it; the device-map planner sizes
// components from it.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace diffuse {

struct ComponentSummary {
  std::string name;        // "transformer", or the folder name for a lone model
  std::string library;     // "diffusers", "transformers"
  std::string class_name;  // "FluxTransformer2DModel"; "" when unknown
  std::vector<std::string> weight_files;  // file names, shards in order
  int64_t tensors = 0;
  int64_t parameters = 0;  // elements over all tensors
  uint64_t bytes = 0;
  std::map<std::string, uint64_t> bytes_by_dtype;  // "BF16" -> bytes
};

struct FolderSummary {
  std::filesystem::path folder;
  std::string class_name;  // the pipeline's class, or the model's
  bool is_pipeline = false;
  std::vector<ComponentSummary> components;  // with weights; tokenizers and schedulers are listed without

  uint64_t total_bytes() const;
  int64_t total_parameters() const;
  std::string to_text() const;
  std::string to_json() const;
};

// A pipeline folder (with model_index.json) or a model folder (with config.json and weights).
FolderSummary inspect_folder(const std::filesystem::path& folder);

// "1.23 GB"-style text for a byte count (powers of 1000, as Accelerate prints budgets).
std::string format_bytes(uint64_t bytes);

}  // namespace diffuse
