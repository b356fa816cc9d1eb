#include "diffuse/io/safetensors.hpp"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "diffuse/error.hpp"
#include "diffuse/errors.hpp"
#include "io/atomic_file.hpp"

namespace diffuse {
namespace {

// The reference implementation refuses headers over 100 MB; so do we, before allocating.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeEntry {
  const char* name;
  size_t element_size;
};
constexpr DtypeEntry kDtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
    {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"U16", 2}, {"U32", 4},
    {"U64", 8},
};

std::optional<size_t> element_size_of(std::string_view dtype) {
  for (const auto& entry : kDtypes)
    if (dtype == entry.name) return entry.element_size;
  return std::nullopt;
}

std::string where(const std::filesystem::path& path) { return path.string() + ": "; }

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

c10::ScalarType safetensors_scalar_type(std::string_view dtype) {
  if (dtype == "F64") return c10::kDouble;
  if (dtype == "F32") return c10::kFloat;
  if (dtype == "F16") return c10::kHalf;
  if (dtype == "BF16") return c10::kBFloat16;
  if (dtype == "I64") return c10::kLong;
  if (dtype == "I32") return c10::kInt;
  if (dtype == "I16") return c10::kShort;
  if (dtype == "I8") return c10::kChar;
  if (dtype == "U8") return c10::kByte;
  if (dtype == "BOOL") return c10::kBool;
#if TORCH_VERSION_MAJOR >= 2
  if (dtype == "F8_E4M3") return c10::kFloat8_e4m3fn;
  if (dtype == "F8_E5M2") return c10::kFloat8_e5m2;
#endif
  throw Error("safetensors dtype '" + std::string(dtype) + "' has no tensor type in this libtorch");
}

std::string safetensors_dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kDouble: return "F64";
    case c10::kFloat: return "F32";
    case c10::kHalf: return "F16";
    case c10::kBFloat16: return "BF16";
    case c10::kLong: return "I64";
    case c10::kInt: return "I32";
    case c10::kShort: return "I16";
    case c10::kChar: return "I8";
    case c10::kByte: return "U8";
    case c10::kBool: return "BOOL";
#if TORCH_VERSION_MAJOR >= 2
    case c10::kFloat8_e4m3fn: return "F8_E4M3";
    case c10::kFloat8_e5m2: return "F8_E5M2";
#endif
    default: throw Error(std::string("safetensors has no dtype for ") + c10::toString(dtype));
  }
}

// The mapped file. Tensors returned by view() hold a shared_ptr to it.
struct SafetensorsFile::Mapping {
  void* address = nullptr;
  size_t size = 0;
  uint64_t data_offset = 0;  // 8 + header length
  ~Mapping() {
    if (address != nullptr && size > 0) munmap(address, size);
  }
  const uint8_t* data() const { return static_cast<const uint8_t*>(address) + data_offset; }
  uint64_t data_size() const { return size - data_offset; }
};

SafetensorsFile::SafetensorsFile(std::filesystem::path path) : path_(std::move(path)) {
  int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) throw NotFoundError(where(path_) + "cannot open: " + std::strerror(err));
    throw Error(where(path_) + "cannot open: " + std::strerror(err));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw Error(where(path_) + "cannot stat: " + std::strerror(err));
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size < 8) {
    ::close(fd);
    throw CorruptInputError(where(path_) + "truncated: " + std::to_string(mapping->size) +
                " bytes, shorter than the 8-byte header length");
  }
  mapping->address = mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping->address == MAP_FAILED) {
    mapping->address = nullptr;
    throw Error(where(path_) + "cannot map: " + std::strerror(errno));
  }

  uint64_t header_length = 0;
  std::memcpy(&header_length, mapping->address, 8);  // little-endian, as x86 and arm64 are
  if (header_length > kMaxHeaderBytes)
    throw CorruptInputError(where(path_) + "header length " + std::to_string(header_length) +
                " is over the 100 MB limit (corrupt or not a safetensors file)");
  if (8 + header_length > mapping->size)
    throw CorruptInputError(where(path_) + "header length " + std::to_string(header_length) +
                " runs past the end of the file (" + std::to_string(mapping->size) + " bytes): truncated?");
  mapping->data_offset = 8 + header_length;

  const char* header_text = static_cast<const char*>(mapping->address) + 8;
  nlohmann::json header = nlohmann::json::parse(header_text, header_text + header_length, nullptr,
                                                /*allow_exceptions=*/false);
  if (header.is_discarded()) throw CorruptInputError(where(path_) + "header is not valid JSON");
  if (!header.is_object()) throw CorruptInputError(where(path_) + "header is not a JSON object");

  const uint64_t data_size = mapping->data_size();
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw CorruptInputError(where(path_) + "__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          throw CorruptInputError(where(path_) + "__metadata__ value of '" + key + "' is not a string");
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string at = where(path_) + "tensor '" + name + "': ";
    if (!entry.is_object()) throw CorruptInputError(at + "entry is not an object");
    if (!entry.contains("dtype") || !entry["dtype"].is_string())
      throw CorruptInputError(at + "missing string 'dtype'");
    if (!entry.contains("shape") || !entry["shape"].is_array())
      throw CorruptInputError(at + "missing array 'shape'");
    if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2)
      throw CorruptInputError(at + "missing 'data_offsets' [begin, end]");

    TensorInfo info;
    info.name = name;
    info.dtype = entry["dtype"].get<std::string>();
    auto element_size = element_size_of(info.dtype);
    if (!element_size) throw CorruptInputError(at + "unknown dtype '" + info.dtype + "'");
    for (const auto& dim : entry["shape"]) {
      if (!dim.is_number_unsigned()) throw CorruptInputError(at + "shape has an entry that is not a non-negative integer");
      if (dim.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw CorruptInputError(at + "shape entry " + std::to_string(dim.get<uint64_t>()) + " is too large");
      info.shape.push_back(dim.get<int64_t>());
    }
    for (const auto& offset : entry["data_offsets"])
      if (!offset.is_number_unsigned()) throw CorruptInputError(at + "data_offsets must be non-negative integers");
    info.data_begin = entry["data_offsets"][0].get<uint64_t>();
    info.data_end = entry["data_offsets"][1].get<uint64_t>();
    if (info.data_begin > info.data_end)
      throw CorruptInputError(at + "data_offsets begin " + std::to_string(info.data_begin) + " is after end " +
                  std::to_string(info.data_end));
    if (info.data_end > data_size)
      throw CorruptInputError(at + "data_offsets end " + std::to_string(info.data_end) +
                  " is past the data section (" + std::to_string(data_size) + " bytes): truncated?");
    uint64_t expected = *element_size;
    int64_t elements = 1;  // must fit int64 too, even when a zero dimension makes the bytes 0
    for (int64_t dim : info.shape)
      if (__builtin_mul_overflow(expected, static_cast<uint64_t>(dim), &expected) ||
          __builtin_mul_overflow(elements, dim, &elements))
        throw CorruptInputError(at + "shape is too large (its size overflows 64 bits)");
    if (expected != info.byte_size())
      throw CorruptInputError(at + "shape and dtype " + info.dtype + " need " + std::to_string(expected) +
                  " bytes but data_offsets span " + std::to_string(info.byte_size()));
    tensors_.push_back(std::move(info));
  }

  // As the reference reader requires, the tensors tile the data section exactly: from byte 0, each one
  // where the previous ends (no overlap, no gap), the last at the end of the file. Bytes that no tensor
  // owns mean a damaged file or a header that does not describe it.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->data_begin != b->data_begin ? a->data_begin < b->data_begin : a->data_end < b->data_end;
  });
  uint64_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : by_offset) {
    if (t->data_begin < covered)
      throw CorruptInputError(where(path_) + "tensors '" + previous->name + "' and '" + t->name + "' have overlapping data_offsets");
    if (t->data_begin > covered)
      throw CorruptInputError(where(path_) + "data section: bytes " + std::to_string(covered) + " to " +
                  std::to_string(t->data_begin) + " belong to no tensor (tensor '" + t->name + "' starts at " +
                  std::to_string(t->data_begin) + ")");
    covered = t->data_end;
    previous = t;
  }
  if (covered != data_size)
    throw CorruptInputError(where(path_) + "data section has " + std::to_string(data_size) + " bytes but its tensors cover " +
                std::to_string(covered) + ": the rest belongs to no tensor (trailing bytes, or a damaged header)");
  std::sort(tensors_.begin(), tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  mapping_ = std::move(mapping);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  return (it != tensors_.end() && it->name == name) ? &*it : nullptr;
}

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr) throw CorruptInputError(where(path_) + "no tensor named '" + std::string(name) + "'");
  return *info;
}

uint64_t SafetensorsFile::data_bytes() const { return mapping_->data_size(); }

at::Tensor SafetensorsFile::view(std::string_view name) const {
  const TensorInfo& t = info(name);
  const c10::ScalarType type = safetensors_scalar_type(t.dtype);
  auto keep_alive = mapping_;
  void* bytes = const_cast<uint8_t*>(mapping_->data() + t.data_begin);
  // from_blob with a deleter that holds the mapping: the view outlives this object safely.
  return at::from_blob(bytes, t.shape, [keep_alive](void*) {}, at::TensorOptions().dtype(type));
}

at::Tensor SafetensorsFile::load(std::string_view name, std::optional<c10::ScalarType> dtype,
                                 c10::Device device) const {
  at::Tensor mapped = view(name);
  const c10::ScalarType target = dtype.value_or(mapped.scalar_type());
  // copy=true: the result owns its memory even when neither device nor dtype changes.
  return mapped.to(device, target, /*non_blocking=*/false, /*copy=*/true);
}

void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") throw Error(where(path) + "'__metadata__' is not a valid tensor name");
    if (header.contains(name)) throw Error(where(path) + "tensor '" + name + "' is listed twice");
    if (!tensor.defined()) throw Error(where(path) + "tensor '" + name + "' is undefined");
    at::Tensor cpu = tensor.detach().to(c10::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(cpu.numel()) * cpu.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(cpu.scalar_type())},
                    {"shape", cpu.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(std::move(cpu));
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_length = header_text.size();

  write_file_atomically(path, [&](std::ostream& out) {
    out.write(reinterpret_cast<const char*>(&header_length), 8);
    out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
    for (const auto& t : contiguous)
      out.write(static_cast<const char*>(t.data_ptr()),
                static_cast<std::streamsize>(t.numel() * t.element_size()));
  });
}

}  // namespace diffuse
