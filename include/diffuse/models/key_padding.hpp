#pragma once
// Attention where some keys are padding: diffusers passes such masks as bool [batch, 1, 1, keys]
// (Qwen-Image's joint mask: its text mask, then every image token valid). Only keys are masked, so each
// batch item's queries see exactly the keys it keeps; attention runs per item over those keys alone,
// which is the same softmax as the masked one (a masked key weighs exp(-inf) = 0) and keeps the fused
// kernels (cuDNN, flash), none of which takes a mask with its log-sum-exp.
//
//   KeyPadding padding(mask);                       // [batch, keys], read on the host once per call
//   at::Tensor out = attention(q, k, v, scale, backend, padding);

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <vector>

#include "diffuse/models/attention_backend.hpp"
#include "diffuse/parallel/partial_attention.hpp"

namespace diffuse {

class KeyPadding {
 public:
  // No padding: every key is attended to.
  KeyPadding() = default;
  // mask [batch, keys]: nonzero (or true) where the key is attended to, on any device. A mask with
  // every key valid is the same as none. Throws diffuse::Error for a mask that is not 2-D.
  explicit KeyPadding(const at::Tensor& mask);

  // Whether some key of some batch item is padding (false: attention runs as without a mask).
  bool any() const;
  int64_t batch() const;
  int64_t keys() const;
  // [batch, keys] bool on the CPU, or undefined for a default-constructed KeyPadding.
  at::Tensor mask() const;
  // Keys [start, start + length) alone, e.g. one ring block's (a default-constructed one stays empty).
  // Copies share what they work out, so a block asks the host for its part once per call, not per layer.
  KeyPadding narrow(int64_t start, int64_t length) const;
  // The indices of the keys batch item `item` attends to (int64 on the CPU); undefined when it keeps all.
  at::Tensor kept(int64_t item) const;
  // The same on `device` (the copy is kept, so the blocks of one call copy them once).
  at::Tensor kept_on(int64_t item, c10::Device device) const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// attention(q, k, v, scale, backend) (attention_backend.hpp) with the keys `padding` marks as padding
// left out of each batch item's softmax. q [batch, heads, q_len, head_dim], k and v [batch, heads,
// k_len, head_dim]; `padding` is empty or [batch, k_len] (diffuse::Error otherwise). An item with no
// key left gets zeros (and log-sum-exp -inf, so that a ring merge gives it no weight).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     AttentionBackend backend, const KeyPadding& padding);
PartialAttention attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                    AttentionBackend backend, const KeyPadding& padding);

}  // namespace diffuse
