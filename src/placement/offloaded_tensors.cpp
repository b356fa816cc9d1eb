#include "diffuse/placement/offloaded_tensors.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <unordered_set>

namespace diffuse {
namespace {

constexpr int64_t kSlabBytes = int64_t{1} << 30;
constexpr int64_t kAlignment = 512;  // of each copy in a slab: any dtype, and cache lines

int64_t aligned(int64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

int64_t power_of_two_at_least(int64_t bytes) {
  int64_t p = kAlignment;
  while (p < bytes) p <<= 1;
  return p;
}

int64_t power_of_two_at_most(int64_t bytes) {
  int64_t p = kAlignment;
  while (p * 2 <= bytes) p <<= 1;
  return p;
}

}  // namespace

SlabCopier::SlabCopier(const std::vector<at::Tensor>& sources, bool pinned) : pinned_(pinned) {
  for (const at::Tensor& source : sources)
    if (aligned(source.nbytes()) <= kSlabBytes) unplaced_ += aligned(source.nbytes());
}

at::Tensor SlabCopier::copy(const at::Tensor& source) {
  at::NoGradGuard no_grad;
  const int64_t bytes = aligned(source.nbytes());
  at::Tensor copy;
  if (bytes > kSlabBytes) {
    copy = at::empty(source.sizes(), source.options().device(c10::kCPU).pinned_memory(pinned_));
  } else {
    if (!slab_.defined() || used_ + bytes > slab_.numel()) {
      // 1 GiB while that much is left; then the largest power of two that what is left fills (the
      // rest going to smaller slabs after it), or the least that holds this copy.
      const int64_t slab_bytes =
          std::min(kSlabBytes, std::max(power_of_two_at_most(unplaced_), power_of_two_at_least(bytes)));
      slab_ = at::empty({slab_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(pinned_));
      used_ = 0;
    }
    copy = slab_.narrow(0, used_, static_cast<int64_t>(source.nbytes())).view(source.scalar_type()).view(source.sizes());
    used_ += bytes;
    unplaced_ -= bytes;
  }
  copy.copy_(source);
  return copy;
}

OffloadedTensors::OffloadedTensors(std::vector<at::Tensor> tensors, c10::Device device, bool pin)
    : device_(device), pin_(pin && device.is_cuda()), tensors_(std::move(tensors)) {
  at::NoGradGuard no_grad;
  // Pinned home copies are packed into slabs; tensors pinned already keep theirs.
  auto needs_copy = [&](const at::Tensor& t) { return pin_ && !(t.device().is_cpu() && t.is_pinned()); };
  std::vector<at::Tensor> to_copy;
  for (const at::Tensor& tensor : tensors_)
    if (needs_copy(tensor)) to_copy.push_back(tensor);
  SlabCopier slabs(to_copy, /*pinned=*/true);
  to_copy.clear();
  homes_.reserve(tensors_.size());
  for (at::Tensor& tensor : tensors_) {
    homes_.push_back(needs_copy(tensor) ? slabs.copy(tensor.data()) : home_copy(tensor));
    // Now, not after the loop: the weights' old memory goes as their copies come.
    tensor.set_data(homes_.back());
  }
}

at::Tensor OffloadedTensors::home_copy(const at::Tensor& tensor) const {
  // .data(): a TensorImpl of its own over the tensor's storage, which later set_data calls on the
  // tensor leave alone.
  at::Tensor home = tensor.device().is_cpu() ? tensor.data() : tensor.to(c10::kCPU);
  if (pin_ && !home.is_pinned()) home = home.pin_memory();
  return home;
}

void OffloadedTensors::bring_in() {
  at::NoGradGuard no_grad;
  try {
    for (size_t i = 0; i < tensors_.size(); ++i) {
      at::Tensor& tensor = tensors_[i];
      // New CPU weights given while it was dropped become its home copy.
      if (tensor.device().is_cpu() && !tensor.is_alias_of(homes_[i])) homes_[i] = home_copy(tensor);
      tensor.set_data(homes_[i].to(homes_[i].options().device(device_), /*non_blocking=*/true));
    }
  } catch (...) {
    drop();
    throw;
  }
}

void OffloadedTensors::drop() noexcept {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < tensors_.size(); ++i) tensors_[i].set_data(homes_[i]);
}

bool OffloadedTensors::holds(const std::vector<at::Tensor>& tensors) const {
  if (tensors.size() != tensors_.size()) return false;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].unsafeGetTensorImpl() != tensors_[i].unsafeGetTensorImpl()) return false;
  return true;
}

uint64_t OffloadedTensors::home_bytes() const {
  uint64_t bytes = 0;
  for (const at::Tensor& home : homes_) bytes += home.nbytes();
  return bytes;
}

std::vector<at::Tensor> module_tensors(const torch::nn::Module& module) {
  // A tensor registered under two names (tied weights) is listed once: it is uploaded once.
  std::vector<at::Tensor> tensors;
  std::unordered_set<const c10::TensorImpl*> seen;
  auto add = [&](const at::Tensor& t) {
    if (seen.insert(t.unsafeGetTensorImpl()).second) tensors.push_back(t);
  };
  for (const at::Tensor& parameter : module.parameters()) add(parameter);
  for (const at::Tensor& buffer : module.buffers()) add(buffer);
  return tensors;
}

}  // namespace diffuse
