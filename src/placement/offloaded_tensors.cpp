#include "diffuse/placement/offloaded_tensors.hpp"

#include <ATen/ATen.h>

#include <unordered_set>

namespace diffuse {

OffloadedTensors::OffloadedTensors(std::vector<at::Tensor> tensors, c10::Device device, bool pin)
    : device_(device), pin_(pin && device.is_cuda()), tensors_(std::move(tensors)) {
  at::NoGradGuard no_grad;
  homes_.reserve(tensors_.size());
  for (at::Tensor& tensor : tensors_) {
    homes_.push_back(home_copy(tensor));
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
