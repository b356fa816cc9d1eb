#include "diffuse/models/key_padding.hpp"

#include <ATen/ATen.h>

#include <string>

#include "diffuse/error.hpp"

namespace diffuse {
namespace {

void check_fits(const KeyPadding& padding, const at::Tensor& q, const at::Tensor& k) {
  if (padding.batch() != q.size(0) || padding.keys() != k.size(2))
    throw Error("attention: the key padding mask is [" + std::to_string(padding.batch()) + ", " +
                std::to_string(padding.keys()) + "] for a batch of " + std::to_string(q.size(0)) + " over " +
                std::to_string(k.size(2)) + " keys");
}

// Item b's keys or values, the padded ones left out.
at::Tensor kept_rows(const at::Tensor& x, const KeyPadding& padding, int64_t b) {
  const at::Tensor item = x.narrow(0, b, 1);
  return padding.kept(b).defined() ? item.index_select(2, padding.kept_on(b, x.device())) : item;
}

}  // namespace

KeyPadding::KeyPadding(const at::Tensor& mask) {
  if (!mask.defined()) return;
  if (mask.dim() != 2) throw Error("KeyPadding: the mask must be [batch, keys], got " + c10::str(mask.sizes()));
  mask_ = mask.to(at::kCPU).to(at::kBool).contiguous();
  kept_.resize(static_cast<size_t>(mask_.size(0)));
  for (int64_t b = 0; b < mask_.size(0); ++b) {
    const at::Tensor row = mask_[b];
    if (row.all().item<bool>()) continue;
    kept_[static_cast<size_t>(b)] = row.nonzero().flatten();
    any_ = true;
  }
}

at::Tensor KeyPadding::kept_on(int64_t item, c10::Device device) const {
  const at::Tensor& kept = kept_[static_cast<size_t>(item)];
  if (!kept.defined() || device.is_cpu()) return kept;
  if (kept_on_device_.size() != kept_.size()) kept_on_device_.resize(kept_.size());
  at::Tensor& copy = kept_on_device_[static_cast<size_t>(item)];
  if (!copy.defined() || copy.device() != device) copy = kept.to(device);
  return copy;
}

KeyPadding KeyPadding::narrow(int64_t start, int64_t length) const {
  if (!mask_.defined()) return {};
  return KeyPadding(mask_.narrow(1, start, length));
}

PartialAttention attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                    AttentionBackend backend, const KeyPadding& padding) {
  if (!padding.any()) return attention_with_lse(q, k, v, scale, backend);
  check_fits(padding, q, k);
  std::vector<at::Tensor> outs, lses;
  for (int64_t b = 0; b < q.size(0); ++b) {
    PartialAttention part =
        attention_with_lse(q.narrow(0, b, 1), kept_rows(k, padding, b), kept_rows(v, padding, b), scale, backend);
    outs.push_back(part.out);
    lses.push_back(part.lse);
  }
  return {at::cat(outs, 0), at::cat(lses, 0)};
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     AttentionBackend backend, const KeyPadding& padding) {
  if (!padding.any()) return attention(q, k, v, scale, backend);
  check_fits(padding, q, k);
  std::vector<at::Tensor> outs;
  for (int64_t b = 0; b < q.size(0); ++b)
    outs.push_back(attention(q.narrow(0, b, 1), kept_rows(k, padding, b), kept_rows(v, padding, b), scale, backend));
  return at::cat(outs, 0);
}

}  // namespace diffuse
