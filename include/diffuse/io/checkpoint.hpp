#pragma once
// A model's weights as diffusers and transformers save them: one safetensors file, or several shards
// tied together by a `*.safetensors.index.json` (FLUX.1-dev's transformer ships as 3 shards, its T5
// as 2). Checkpoint presents both as one set of named tensors.

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/io/safetensors.hpp"

namespace diffuse {

class Checkpoint {
 public:
  // `path` is a .safetensors file, a .safetensors.index.json, or a model folder. In a folder an index
  // wins; otherwise diffusers' and transformers' standard names (diffusion_pytorch_model.safetensors,
  // model.safetensors), otherwise the folder's only .safetensors file. Anything else is an error
  // that lists what the folder holds.
  static Checkpoint open(const std::filesystem::path& path);

  // Every tensor of every shard, sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const TensorInfo* find(std::string_view name) const;
  const TensorInfo& info(std::string_view name) const;  // throws naming the checkpoint and tensor
  // The shard that holds `name`.
  const SafetensorsFile& file_of(std::string_view name) const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  // Sum of every tensor's byte size, as stored.
  uint64_t total_bytes() const;
  // Where it was opened from (the file, the index or the folder).
  const std::filesystem::path& source() const { return source_; }

  at::Tensor view(std::string_view name) const;
  at::Tensor load(std::string_view name, std::optional<c10::ScalarType> dtype = std::nullopt,
                  c10::Device device = c10::kCPU) const;

 private:
  std::filesystem::path source_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::vector<TensorInfo> tensors_;      // sorted by name
  std::vector<size_t> file_of_tensor_;   // parallel to tensors_: index into files_
};

// Writes a model's tensors into `folder` as diffusers does: `<base_name>.safetensors` when they fit in
// one shard of `max_shard_bytes`, else `<base_name>-0000i-of-0000n.safetensors` shards and the
// `<base_name>.safetensors.index.json` that maps each tensor to its shard. Returns the files written.
std::vector<std::filesystem::path> save_checkpoint(const std::filesystem::path& folder, const std::string& base_name,
                                                   const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                                   uint64_t max_shard_bytes = uint64_t{10} << 30);

// The weights file or index inside a model folder, as Checkpoint::open picks it.
std::filesystem::path find_weights_file(const std::filesystem::path& folder);

}  // namespace diffuse
