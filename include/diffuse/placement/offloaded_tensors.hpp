#pragma once
// Weights that live in CPU memory and visit a device to run: the one mechanism under both CPU
// offloads. Sequential offload (dispatch.cpp's CpuOffloadHook) holds one per block; model offload
// (DiffusionPipeline::enable_model_cpu_offload) one per model component.
//
//   OffloadedTensors weights(module_tensors(*model), gpu);   // once: home copies made, pinned
//   weights.bring_in();   // before each run: async copies to the GPU
//   ... model->forward(...) on the GPU ...
//   weights.drop();       // after it: the model's tensors are its CPU home copies again
//
// The tensors are a module's parameters and buffers: an at::Tensor shares its TensorImpl with the
// module's, so set_data on it changes what the module computes with.
//
// Home copies. When `device` is CUDA the constructor copies the tensors into pinned (page-locked) CPU
// memory, so that copying them in is asynchronous, packed into large slabs (SlabCopier, below), and
// points each tensor at its copy; otherwise a tensor's home copy is its CPU data (moved to the CPU
// when it is elsewhere). Pinned home copies cost host memory the size of the tensors plus the slabs'
// tails, for as long as the tensors use them (also after the offload is ended: the weights stay
// there).
//
// bring_in() points each tensor at a new copy of its home copy on `device`. From pinned memory the
// copies are asynchronous, on the device's current stream: the kernels queued after them on that
// stream wait for them, and the CPU does not. With `device` the CPU nothing is copied. If a copy
// fails (out of memory) every tensor is dropped again before the error propagates.
//
// drop() points each tensor back at its home copy. Nothing is copied back: inference does not change
// weights. What a module made of a tensor on the device (Conv2d replaces its weight by a channels-last
// copy with set_data) goes with the device copy; the next bring_in starts from the home copy again.
// The device copies are freed there; the caching allocator hands their memory only to work queued
// later on the same stream, which runs after the kernels that read them.
//
// A tensor given new CPU data while dropped (set_data with other weights) takes that data as its home
// copy at the next bring_in, pinned then.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <vector>

namespace diffuse {

class OffloadedTensors {
 public:
  // Makes the home copies (above); `pin` false keeps them pageable (copies in are then synchronous).
  OffloadedTensors(std::vector<at::Tensor> tensors, c10::Device device, bool pin = true);

  void bring_in();
  void drop() noexcept;

  // Whether these are exactly `tensors` (the same TensorImpls, in order): false once a module has
  // registered or replaced a parameter since, and these must be made again.
  bool holds(const std::vector<at::Tensor>& tensors) const;

  c10::Device device() const { return device_; }
  // Bytes of the home copies.
  uint64_t home_bytes() const;

 private:
  at::Tensor home_copy(const at::Tensor& tensor) const;

  c10::Device device_;
  bool pin_;
  std::vector<at::Tensor> tensors_;
  std::vector<at::Tensor> homes_;
};

// Contiguous CPU copies of tensors (on any device, any dtype, with their sizes), packed in order into
// slabs that are each a power of two: 1 GiB while that much is left, then the largest power of two
// that what is left fills; a tensor over 1 GiB gets a block of its own. Why: libtorch's pinned-memory
// allocator rounds every block up to a power of two, so pinning tensor by tensor can take nearly
// twice their size; packed, only the slabs' tails are lost (where the next copy did not fit). A slab
// lives as long as one copy in it does.
//   SlabCopier slabs(sources, /*pinned=*/true);          // sizes the slabs; copies nothing
//   for (const at::Tensor& s : sources) copies.push_back(slabs.copy(s));   // in the same order
class SlabCopier {
 public:
  SlabCopier(const std::vector<at::Tensor>& sources, bool pinned);
  // The next source's copy, in the order of `sources` (which sized the slabs).
  at::Tensor copy(const at::Tensor& source);

 private:
  bool pinned_;
  int64_t unplaced_ = 0;  // bytes still to place in slabs
  at::Tensor slab_;       // the slab being filled, bytes
  int64_t used_ = 0;
};

// A module's parameters, then its buffers, each tensor once (the tensors model offload moves, as
// Module::to does).
std::vector<at::Tensor> module_tensors(const torch::nn::Module& module);

}  // namespace diffuse
