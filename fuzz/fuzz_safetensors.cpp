// safetensors: the 8-byte header length, the JSON header and its checks against the file's size.
// Input: the bytes of one .safetensors file. SafetensorsFile only reads from a path (it maps the
// file), so each input is written to a scratch file first.
//
// Promise under test: a header that SafetensorsFile accepts describes tensors that can be viewed and
// loaded: every dtype has its element size, shapes are non-negative, byte ranges lie inside the data
// section and match shape x element size. So view() and load() of an accepted tensor either work or
// (for a dtype this libtorch lacks) throw diffuse::Error. And what save_safetensors writes, in any
// order of tensors, reads back the same.

#include <ATen/ATen.h>

#include <cstring>

#include "diffuse/io/safetensors.hpp"
#include "fuzz_support.hpp"

using namespace diffuse;

namespace {

// A tensor this large is viewed but not copied: inputs are small, so only a lying header gets here.
constexpr uint64_t kMaxLoadBytes = uint64_t{1} << 20;

void check_tensor(const SafetensorsFile& file, const TensorInfo& t) {
  FUZZ_CHECK(file.find(t.name) == &t, t.name);
  FUZZ_CHECK(t.data_begin <= t.data_end && t.data_end <= file.data_bytes(), t.name);
  for (int64_t d : t.shape) FUZZ_CHECK(d >= 0, t.name + ": negative dimension");
  const int64_t numel = t.numel();
  FUZZ_CHECK(numel >= 0, t.name);
  c10::ScalarType type = c10::kByte;
  // The one expected error: a dtype this libtorch lacks (F8_*, U16, U32, U64 on libtorch 1.x).
  if (!fuzz::expect_result_or_error("safetensors_scalar_type", [&] { type = safetensors_scalar_type(t.dtype); }))
    return;
  fuzz::expect_result("SafetensorsFile::view and load", [&] {
    at::Tensor view = file.view(t.name);
    FUZZ_CHECK(view.scalar_type() == type, t.name);
    FUZZ_CHECK(view.numel() == numel, t.name);
    FUZZ_CHECK(static_cast<uint64_t>(view.numel()) * view.element_size() == t.byte_size(), t.name);
    if (t.byte_size() <= kMaxLoadBytes) {
      at::Tensor loaded = file.load(t.name);
      // The copy reads every byte of the range: a range past the mapping's end would fault here.
      FUZZ_CHECK(loaded.sizes() == view.sizes() && loaded.is_contiguous(), t.name);
    }
  });
}

// The accepted tensors written again in reverse name order (another order than the reader's) and read
// back: same names, dtypes, shapes and bytes.
void check_round_trip(const SafetensorsFile& file, const fuzz::ScratchFolder& scratch) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto it = file.tensors().rbegin(); it != file.tensors().rend(); ++it) {
    if (it->byte_size() > kMaxLoadBytes) return;
    at::Tensor view;
    if (!fuzz::expect_result_or_error("view", [&] { view = file.view(it->name); })) return;
    tensors.emplace_back(it->name, view);
  }
  const auto path = scratch.path() / "round_trip.safetensors";
  try {
    save_safetensors(path, tensors, file.metadata());
    const SafetensorsFile again(path);
    FUZZ_CHECK(again.tensors().size() == file.tensors().size(), "round trip: tensor count");
    FUZZ_CHECK(again.metadata() == file.metadata(), "round trip: metadata");
    for (const auto& [name, tensor] : tensors) {
      const TensorInfo& a = file.info(name);
      const TensorInfo* b = again.find(name);
      FUZZ_CHECK(b != nullptr && b->dtype == a.dtype && b->shape == a.shape, "round trip: " + name);
      FUZZ_CHECK(a.byte_size() == 0 || std::memcmp(again.view(name).data_ptr(), tensor.data_ptr(), a.byte_size()) == 0,
                 "round trip: bytes of " + name);
    }
  } catch (const Error& error) {
    fuzz::fail("round trip", std::string("the file save_safetensors wrote does not read back: ") + error.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fuzz::ScratchFolder scratch("fuzz_safetensors");
  const auto path = scratch.write("model.safetensors", {reinterpret_cast<const char*>(data), size});
  fuzz::expect_result_or_error("SafetensorsFile", [&] {
    const SafetensorsFile file(path);
    for (size_t i = 0; i < file.tensors().size(); ++i) {
      const TensorInfo& t = file.tensors()[i];
      if (i > 0) FUZZ_CHECK(file.tensors()[i - 1].name < t.name, "tensors() not sorted by name");
      check_tensor(file, t);
    }
    FUZZ_CHECK(!file.contains("__metadata__"), "__metadata__ taken for a tensor");
    check_round_trip(file, scratch);
  });
  return 0;
}
