#include "diffuse/models/key_padding.hpp"

#include <ATen/ATen.h>

#include <string>
#include <utility>

#include "diffuse/error.hpp"

namespace diffuse {

// Immutable once built, but for the caches (KeyPadding is a handle: copies share them).
struct KeyPadding::State {
  at::Tensor mask;
  std::vector<at::Tensor> kept;  // per item; undefined where it keeps every key
  bool any = false;
  std::vector<at::Tensor> kept_on_device;  // the last device asked for
  std::vector<std::pair<std::pair<int64_t, int64_t>, KeyPadding>> narrowed;
};

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
  const at::Tensor kept = padding.kept_on(b, x.device());
  return kept.defined() ? item.index_select(2, kept) : item;
}

}  // namespace

KeyPadding::KeyPadding(const at::Tensor& mask) : state_(std::make_shared<State>()) {
  if (!mask.defined()) {
    state_.reset();
    return;
  }
  if (mask.dim() != 2) throw Error("KeyPadding: the mask must be [batch, keys], got " + c10::str(mask.sizes()));
  State& s = *state_;
  s.mask = mask.to(at::kCPU).to(at::kBool).contiguous();
  s.kept.resize(static_cast<size_t>(s.mask.size(0)));
  for (int64_t b = 0; b < s.mask.size(0); ++b) {
    const at::Tensor row = s.mask[b];
    if (row.all().item<bool>()) continue;
    s.kept[static_cast<size_t>(b)] = row.nonzero().flatten();
    s.any = true;
  }
}

bool KeyPadding::any() const { return state_ && state_->any; }
int64_t KeyPadding::batch() const { return state_ ? state_->mask.size(0) : 0; }
int64_t KeyPadding::keys() const { return state_ ? state_->mask.size(1) : 0; }
at::Tensor KeyPadding::mask() const { return state_ ? state_->mask : at::Tensor(); }
at::Tensor KeyPadding::kept(int64_t item) const {
  return state_ ? state_->kept.at(static_cast<size_t>(item)) : at::Tensor();
}

at::Tensor KeyPadding::kept_on(int64_t item, c10::Device device) const {
  const at::Tensor kept = this->kept(item);
  if (!kept.defined() || device.is_cpu()) return kept;
  std::vector<at::Tensor>& copies = state_->kept_on_device;
  if (copies.size() != state_->kept.size()) copies.resize(state_->kept.size());
  at::Tensor& copy = copies[static_cast<size_t>(item)];
  if (!copy.defined() || copy.device() != device) copy = kept.to(device);
  return copy;
}

KeyPadding KeyPadding::narrow(int64_t start, int64_t length) const {
  if (!state_) return {};
  for (const auto& [range, part] : state_->narrowed)
    if (range == std::make_pair(start, length)) return part;
  KeyPadding part(state_->mask.narrow(1, start, length));
  state_->narrowed.emplace_back(std::make_pair(start, length), part);
  return part;
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
