#pragma once
// A model call replayed from a CUDA graph: what torch.compile's mode="reduce-overhead" does for a
// denoiser. A UNet call at 512x512 is over a thousand small kernels, and launching them one by one
// from the CPU takes longer than running them; a graph launches them all at once.
//
//   CudaGraphCall denoiser([&](const std::vector<at::Tensor>& in) { return unet->forward(in[0], in[1], in[2]); });
//   for (...) noise = denoiser({latents, t, embeddings});   // t as a device tensor, not a CPU scalar
//
// The first call with a given set of input shapes runs the function eagerly (its warm-up, and that
// call's result) and then captures it into a graph that reads from static copies of the inputs; each
// later call with the same shapes copies its inputs in and replays the graph. New shapes capture anew
// (one graph is kept at a time). Off CUDA, or where capture is not possible, every call is eager.
//
// What the function may do: CUDA work on the current stream only, the same work for the same shapes,
// no host synchronization (no .item(), no copies to the CPU, no CPU tensors as inputs: copy them to
// the device first). What its owner must guarantee: the weights it reads stay where they are while
// this object lives (make one per denoising loop; moving or offloading a model between calls would
// replay stale addresses). A capture that fails logs one warning and leaves the call eager.

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <vector>

namespace diffuse {

class CudaGraphCall {
 public:
  using Function = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

  // `enabled` false: every call is eager (a pipeline option, or a placement that cannot be captured).
  explicit CudaGraphCall(Function function, bool enabled = true);
  ~CudaGraphCall();
  CudaGraphCall(const CudaGraphCall&) = delete;
  CudaGraphCall& operator=(const CudaGraphCall&) = delete;

  // function(inputs), from the graph when one is captured for these shapes. The result is the
  // caller's (a copy of the graph's output buffer).
  at::Tensor operator()(const std::vector<at::Tensor>& inputs);

  // Whether the last call was a replay (for tests and logs).
  bool replayed() const { return replayed_; }
  // Whether this build can capture at all (libtorch with CUDA).
  static bool supported();

 private:
  struct Graph;
  Function function_;
  bool enabled_;
  bool replayed_ = false;
  std::unique_ptr<Graph> graph_;
};

}  // namespace diffuse
