#pragma once
// What QwenImageTransformer2DModel's forward derives from its inputs' shapes and text mask rather than
// from their values: the rotary rows of the [text, image] tokens and the key padding of the joint mask.
// Both are made on the host (the rotary angles in float32 on the CPU, as diffusers makes them; the
// padding's kept-key indices from the mask) and copied to the device. A CUDA graph cannot capture host
// work that feeds the device, nor a copy from pageable memory, so the model makes them on the first
// call with a given key and keeps them here: a later call with the same shapes and mask copies
// nothing to the device, which is what lets a pipeline replay forward from a graph
// (models/graph_call.hpp) after its eager first call. The tensors are the ones a fresh computation
// gives, bit for bit: the same operations, done once.
//
//   QwenImageCallTableCache cache;
//   RotaryEmbedding rotary = cache.rotary(key, [&] { return build_rotary(); });  // built once per key
//   KeyPadding padding = cache.key_padding(joint_mask_on_cpu);                   // one per mask content
//
// Bounded: the last kCapacity rotary tables and kCapacity key paddings stay (a denoising loop uses one
// or two of each: the conditional call and the negative one). A captured graph reads the tensors it was
// captured with, wherever the cache is: whoever keeps a graph over forward also keeps that call's
// QwenImageCallTables (QwenImageTransformer2DModelImpl::call_tables) for as long as the graph lives,
// so that an entry this cache drops is not freed under the graph.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <vector>

#include "diffuse/models/embeddings.hpp"
#include "diffuse/models/key_padding.hpp"
#include "diffuse/models/qwenimage_rope.hpp"

namespace diffuse {

// One forward call's tables, as the blocks read them.
struct QwenImageCallTables {
  // Text rows then image rows (this rank's shards of each under context parallelism), on the device
  // of the call's hidden_states.
  RotaryEmbedding rotary;
  // The joint mask's padding (text mask then every image token valid; under context parallelism every
  // rank's shard of it in mesh order); empty when the call has no text mask.
  KeyPadding key_padding;
};

// What a rotary table depends on: the image shapes, the text length, the device, and which shard of
// the tokens the call keeps (parts 1, index 0 without context parallelism).
struct QwenImageRotaryKey {
  std::vector<QwenImageShape> shapes;
  int64_t text_len = 0;
  c10::Device device = c10::kCPU;
  int64_t parts = 1;
  int64_t index = 0;

  bool operator==(const QwenImageRotaryKey& other) const {
    return shapes == other.shapes && text_len == other.text_len && device == other.device && parts == other.parts &&
           index == other.index;
  }
};

class QwenImageCallTableCache {
 public:
  static constexpr size_t kCapacity = 4;

  // The table kept for `key`, or build()'s result, then kept (the least recently used one past
  // kCapacity is dropped).
  RotaryEmbedding rotary(const QwenImageRotaryKey& key, const std::function<RotaryEmbedding()>& build);
  // KeyPadding(mask) for `mask` [batch, keys] bool on the CPU, or the one kept for a mask of the same
  // shape and values; it keeps the copies of its kept-key indices that the attention makes on a device,
  // so a later call copies none. Compared on the CPU: no device work. Throws diffuse::Error for a mask
  // that is not bool on the CPU.
  KeyPadding key_padding(const at::Tensor& mask);

  // How many of each are kept (for tests).
  size_t rotary_entries() const { return rotary_.size(); }
  size_t key_padding_entries() const { return padding_.size(); }
  void clear();

 private:
  struct RotaryEntry {
    QwenImageRotaryKey key;
    RotaryEmbedding rotary;
  };
  // Most recently used first.
  std::list<RotaryEntry> rotary_;
  std::list<KeyPadding> padding_;
};

}  // namespace diffuse
