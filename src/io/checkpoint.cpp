#include "diffuse/io/checkpoint.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "io/atomic_file.hpp"

namespace diffuse {
namespace {

bool ends_with(const std::string& text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The shard file names of an index, with the tensors each one must hold.
std::map<std::string, std::vector<std::string>> read_index(const std::filesystem::path& index_path) {
  std::ifstream in(index_path);
  if (!in) throw Error(index_path.string() + ": cannot open");
  nlohmann::json index = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) throw Error(index_path.string() + ": not a JSON object");
  if (!index.contains("weight_map") || !index["weight_map"].is_object())
    throw Error(index_path.string() + ": missing object 'weight_map'");
  std::map<std::string, std::vector<std::string>> shards;
  for (const auto& [tensor, file] : index["weight_map"].items()) {
    if (!file.is_string())
      throw Error(index_path.string() + ": weight_map entry '" + tensor + "' is not a file name");
    const std::string name = file.get<std::string>();
    if (name.find('/') != std::string::npos || name == "..")
      throw Error(index_path.string() + ": shard name '" + name + "' must be a file in the same folder");
    shards[name].push_back(tensor);
  }
  if (shards.empty()) throw Error(index_path.string() + ": weight_map is empty");
  return shards;
}

}  // namespace

std::filesystem::path find_weights_file(const std::filesystem::path& folder) {
  if (!std::filesystem::is_directory(folder)) throw Error(folder.string() + ": not a folder");
  std::vector<std::filesystem::path> indexes, files;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const std::string name = entry.path().filename().string();
    if (ends_with(name, ".safetensors.index.json")) indexes.push_back(entry.path());
    if (ends_with(name, ".safetensors")) files.push_back(entry.path());
  }
  for (const char* standard : {"diffusion_pytorch_model.safetensors", "model.safetensors"}) {
    const auto index = folder / (std::string(standard) + ".index.json");
    if (std::filesystem::exists(index)) return index;
    if (std::filesystem::exists(folder / standard)) return folder / standard;
  }
  if (indexes.size() == 1) return indexes.front();
  if (indexes.empty() && files.size() == 1) return files.front();
  std::string listing;
  for (const auto& f : indexes) listing += " " + f.filename().string();
  for (const auto& f : files) listing += " " + f.filename().string();
  if (listing.empty()) throw Error(folder.string() + ": no .safetensors weights in this folder");
  throw Error(folder.string() + ": cannot tell which weights to load among:" + listing);
}

Checkpoint Checkpoint::open(const std::filesystem::path& path) {
  Checkpoint checkpoint;
  checkpoint.source_ = path;
  if (!std::filesystem::exists(path)) throw Error(path.string() + ": no such file or folder");
  const std::filesystem::path file =
      std::filesystem::is_directory(path) ? find_weights_file(path) : path;

  std::map<std::string, std::string> owner;  // tensor -> shard that holds it, for duplicate checks
  auto add_file = [&](const std::filesystem::path& shard_path) {
    auto shard = std::make_shared<SafetensorsFile>(shard_path);
    const size_t file_index = checkpoint.files_.size();
    for (const TensorInfo& info : shard->tensors()) {
      auto [it, inserted] = owner.emplace(info.name, shard_path.filename().string());
      if (!inserted)
        throw Error(file.string() + ": tensor '" + info.name + "' is in both " + it->second + " and " +
                    shard_path.filename().string());
      checkpoint.tensors_.push_back(info);
      checkpoint.file_of_tensor_.push_back(file_index);
    }
    checkpoint.files_.push_back(std::move(shard));
  };

  if (ends_with(file.filename().string(), ".index.json")) {
    for (const auto& [shard_name, expected] : read_index(file)) {
      const auto shard_path = file.parent_path() / shard_name;
      std::error_code error;  // a name the file system cannot hold (too long, ...) is missing too
      if (!std::filesystem::exists(shard_path, error))
        throw Error(file.string() + ": shard '" + shard_name + "' named in the index is missing" +
                    (error ? " (" + error.message() + ")" : std::string()));
      add_file(shard_path);
      for (const std::string& tensor : expected)
        if (!checkpoint.files_.back()->contains(tensor))
          throw Error(file.string() + ": tensor '" + tensor + "' is mapped to " + shard_name +
                      ", which does not hold it");
    }
  } else {
    add_file(file);
  }

  // Sort tensors by name, carrying their shard index along.
  std::vector<size_t> order(checkpoint.tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return checkpoint.tensors_[a].name < checkpoint.tensors_[b].name;
  });
  std::vector<TensorInfo> tensors;
  std::vector<size_t> files;
  for (size_t i : order) {
    tensors.push_back(std::move(checkpoint.tensors_[i]));
    files.push_back(checkpoint.file_of_tensor_[i]);
  }
  checkpoint.tensors_ = std::move(tensors);
  checkpoint.file_of_tensor_ = std::move(files);
  return checkpoint;
}

const TensorInfo* Checkpoint::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  return (it != tensors_.end() && it->name == name) ? &*it : nullptr;
}

const TensorInfo& Checkpoint::info(std::string_view name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr) throw Error(source_.string() + ": no tensor named '" + std::string(name) + "'");
  return *info;
}

const SafetensorsFile& Checkpoint::file_of(std::string_view name) const {
  const TensorInfo& t = info(name);
  return *files_[file_of_tensor_[static_cast<size_t>(&t - tensors_.data())]];
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& t : tensors_) total += t.byte_size();
  return total;
}

std::vector<std::filesystem::path> save_checkpoint(const std::filesystem::path& folder, const std::string& base_name,
                                                   const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                                   uint64_t max_shard_bytes) {
  // Greedy: tensors in the given order fill a shard until the next one would not fit.
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& item : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(item.second.numel()) * item.second.element_size();
    if (shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(item);
    shard_bytes += bytes;
    total_bytes += bytes;
  }
  std::vector<std::filesystem::path> written;
  if (shards.size() == 1) {
    written.push_back(folder / (base_name + ".safetensors"));
    save_safetensors(written.back(), tensors, {{"format", "pt"}});
    return written;
  }
  nlohmann::json index;
  index["metadata"] = {{"total_size", total_bytes}};
  index["weight_map"] = nlohmann::json::object();
  char name[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof name, "-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    const std::string file = base_name + name;
    save_safetensors(folder / file, shards[i], {{"format", "pt"}});
    written.push_back(folder / file);
    for (const auto& item : shards[i]) index["weight_map"][item.first] = file;
  }
  written.push_back(folder / (base_name + ".safetensors.index.json"));
  write_file_atomically(written.back(), [&](std::ostream& out) { out << index.dump(2) << "\n"; });
  return written;
}

at::Tensor Checkpoint::view(std::string_view name) const { return file_of(name).view(name); }

at::Tensor Checkpoint::load(std::string_view name, std::optional<c10::ScalarType> dtype,
                            c10::Device device) const {
  return file_of(name).load(name, dtype, device);
}

}  // namespace diffuse
