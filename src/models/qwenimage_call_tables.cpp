#include "diffuse/models/qwenimage_call_tables.hpp"

#include <ATen/ATen.h>

#include <string>

#include "diffuse/error.hpp"

namespace diffuse {

RotaryEmbedding QwenImageCallTableCache::rotary(const QwenImageRotaryKey& key,
                                                const std::function<RotaryEmbedding()>& build) {
  for (auto it = rotary_.begin(); it != rotary_.end(); ++it) {
    if (!(it->key == key)) continue;
    rotary_.splice(rotary_.begin(), rotary_, it);
    return rotary_.front().rotary;
  }
  rotary_.push_front({key, build()});
  if (rotary_.size() > kCapacity) rotary_.pop_back();
  return rotary_.front().rotary;
}

KeyPadding QwenImageCallTableCache::key_padding(const at::Tensor& mask) {
  if (!mask.defined() || mask.device() != c10::kCPU || mask.scalar_type() != at::kBool)
    throw Error("QwenImageCallTableCache: the key padding mask must be bool on the CPU" +
                (mask.defined() ? ", got " + std::string(c10::toString(mask.scalar_type())) + " on " + mask.device().str()
                                : std::string(", got none")));
  for (auto it = padding_.begin(); it != padding_.end(); ++it) {
    const at::Tensor kept = it->mask();
    if (kept.sizes() != mask.sizes() || !at::equal(kept, mask)) continue;
    padding_.splice(padding_.begin(), padding_, it);
    return padding_.front();
  }
  // A copy: the caller may change its mask later, and this entry is found by the values it had.
  padding_.push_front(KeyPadding(mask.clone()));
  if (padding_.size() > kCapacity) padding_.pop_back();
  return padding_.front();
}

void QwenImageCallTableCache::clear() {
  rotary_.clear();
  padding_.clear();
}

}  // namespace diffuse
