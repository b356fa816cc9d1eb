// A sharded checkpoint: model.safetensors.index.json and the shards it names, opened as a folder
// through Checkpoint::open (which prefers the index to any single file).
// Input: the index's JSON, then the bytes of up to two shards, as parts (fuzz_support.hpp); shard i
// is written as model-0000i-of-00002.safetensors, the names the seeds' indexes use.
//
// Promise under test: an accepted checkpoint lists every tensor once, sorted, each found in the shard
// that file_of() names, with byte sizes that add up to total_bytes(); the index cannot name a file
// outside the folder.

#include <ATen/ATen.h>

#include "diffuse/io/checkpoint.hpp"
#include "fuzz_support.hpp"

using namespace diffuse;

namespace {

const char* const kShardNames[] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
constexpr const char* kIndexName = "model.safetensors.index.json";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fuzz::ScratchFolder scratch("fuzz_checkpoint");
  const auto parts = fuzz::split_parts(data, size, 3);
  scratch.write(kIndexName, parts[0]);
  for (size_t i = 0; i < 2; ++i) {
    if (i + 1 < parts.size())
      scratch.write(kShardNames[i], parts[i + 1]);
    else
      scratch.remove(kShardNames[i]);
  }

  fuzz::expect_result_or_error("Checkpoint::open", [&] {
    const Checkpoint checkpoint = Checkpoint::open(scratch.path());
    FUZZ_CHECK(find_weights_file(scratch.path()) == scratch.path() / kIndexName, "the index was not preferred");
    uint64_t total = 0;
    for (size_t i = 0; i < checkpoint.tensors().size(); ++i) {
      const TensorInfo& t = checkpoint.tensors()[i];
      if (i > 0) FUZZ_CHECK(checkpoint.tensors()[i - 1].name < t.name, "tensors() not sorted, or listed twice");
      const SafetensorsFile& shard = checkpoint.file_of(t.name);
      FUZZ_CHECK(shard.path().parent_path() == scratch.path(), shard.path().string() + " is outside the folder");
      FUZZ_CHECK(shard.contains(t.name), t.name);
      FUZZ_CHECK(&checkpoint.info(t.name) == &t, t.name);
      total += t.byte_size();
      // A dtype this libtorch lacks is the one expected error of view().
      if (fuzz::expect_result_or_error("safetensors_scalar_type", [&] { safetensors_scalar_type(t.dtype); }))
        fuzz::expect_result("Checkpoint::view",
                            [&] { FUZZ_CHECK(checkpoint.view(t.name).numel() == t.numel(), t.name); });
    }
    FUZZ_CHECK(total == checkpoint.total_bytes(), "total_bytes");
  });
  return 0;
}
