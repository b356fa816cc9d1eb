#pragma once
// The safetensors format: an 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the data section. SafetensorsFile maps a file and validates its
// header once; tensors are read one at a time, so listing names, shapes and sizes costs no weight I/O.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace diffuse {

// One tensor as a header describes it.
struct TensorInfo {
  std::string name;
  std::string dtype;            // as the file spells it: "F32", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;      // byte range inside the data section
  uint64_t data_end = 0;

  int64_t numel() const;
  uint64_t byte_size() const { return data_end - data_begin; }
};

// libtorch's element type for a safetensors dtype name; throws diffuse::Error for a name it lacks.
c10::ScalarType safetensors_scalar_type(std::string_view dtype);
// The safetensors dtype name of a libtorch element type; throws for a type the format has no name for.
std::string safetensors_dtype_name(c10::ScalarType dtype);

class SafetensorsFile {
 public:
  // Maps the file and validates its header; throws diffuse::Error naming the file and the fault.
  explicit SafetensorsFile(std::filesystem::path path);

  const std::filesystem::path& path() const { return path_; }
  // Every tensor, sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const TensorInfo* find(std::string_view name) const;
  const TensorInfo& info(std::string_view name) const;  // throws naming the file and tensor
  uint64_t data_bytes() const;

  // A read-only CPU tensor over the mapped bytes (no copy); it keeps the mapping alive.
  at::Tensor view(std::string_view name) const;
  // A tensor that owns its memory, in `dtype` (default: the file's) on `device`. Only this tensor's
  // bytes are read.
  at::Tensor load(std::string_view name, std::optional<c10::ScalarType> dtype = std::nullopt,
                  c10::Device device = c10::kCPU) const;

 private:
  struct Mapping;
  std::filesystem::path path_;
  std::shared_ptr<Mapping> mapping_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (any device, contiguous or not) in the given order. The file appears whole or not
// at all: it is written beside the target and renamed into place.
void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace diffuse
