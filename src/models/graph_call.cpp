#include "diffuse/models/graph_call.hpp"
// (Not named cuda_*.cpp, which CMake leaves out of CPU builds: those need the eager fallback below.)

#include <ATen/ATen.h>

#include <exception>
#include <optional>
#include <string>
#include <utility>

#include "log.hpp"

#if DIFFUSE_HAS_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace diffuse {

#if DIFFUSE_HAS_CUDA

namespace {

// What a graph was captured for: every input's shape, dtype and device.
struct Signature {
  std::vector<std::vector<int64_t>> sizes;
  std::vector<at::ScalarType> dtypes;
  std::vector<c10::Device> devices;

  explicit Signature(const std::vector<at::Tensor>& inputs) {
    for (const at::Tensor& t : inputs) {
      sizes.push_back(t.sizes().vec());
      dtypes.push_back(t.scalar_type());
      devices.push_back(t.device());
    }
  }
  bool operator==(const Signature& other) const {
    return sizes == other.sizes && dtypes == other.dtypes && devices == other.devices;
  }
};

// The device a call can be captured on: every input defined and on one CUDA device.
std::optional<c10::Device> capture_device(const std::vector<at::Tensor>& inputs) {
  std::optional<c10::Device> device;
  for (const at::Tensor& t : inputs) {
    if (!t.defined() || !t.is_cuda()) return std::nullopt;
    if (device && *device != t.device()) return std::nullopt;
    device = t.device();
  }
  return device;
}

}  // namespace

struct CudaGraphCall::Graph {
  Signature signature;
  std::vector<at::Tensor> inputs;  // static copies the graph reads
  at::Tensor output;               // the buffer the graph writes
  at::cuda::CUDAGraph graph;

  explicit Graph(Signature s) : signature(std::move(s)) {}
};

bool CudaGraphCall::supported() { return true; }

CudaGraphCall::CudaGraphCall(Function function, bool enabled) : function_(std::move(function)), enabled_(enabled) {}
CudaGraphCall::~CudaGraphCall() = default;

at::Tensor CudaGraphCall::operator()(const std::vector<at::Tensor>& inputs) {
  replayed_ = false;
  const std::optional<c10::Device> device = enabled_ ? capture_device(inputs) : std::nullopt;
  if (!device) return function_(inputs);

  Signature signature(inputs);
  if (graph_ && graph_->signature == signature) {
    for (size_t i = 0; i < inputs.size(); ++i) graph_->inputs[i].copy_(inputs[i], /*non_blocking=*/true);
    graph_->graph.replay();
    replayed_ = true;
    return graph_->output.clone();
  }

  // New shapes: drop the old graph (and its memory pool) first.
  graph_.reset();
  c10::cuda::CUDAGuard device_guard(*device);
  const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream(device->index());
  // Capture needs a stream other than the default one; the warm-up runs there too, so that the
  // libraries' per-stream state (cuBLAS workspaces, cuDNN plans) exists before capture.
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device->index());
  at::cuda::CUDAEvent inputs_ready;
  inputs_ready.record(caller);
  inputs_ready.block(side);

  c10::cuda::CUDAStreamGuard on_side(side);
  const at::Tensor result = function_(inputs);  // the warm-up is this call's result; its errors are the caller's
  auto graph = std::make_unique<Graph>(std::move(signature));
  bool capturing = false;
  try {
    for (const at::Tensor& t : inputs) graph->inputs.push_back(t.clone());
    // Thread-local mode: other threads' CUDA calls (a progress bar, a communicator) do not break it.
    graph->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    capturing = true;
    graph->output = function_(graph->inputs);
    capturing = false;
    graph->graph.capture_end();
    graph_ = std::move(graph);
  } catch (const std::exception& e) {
    if (capturing) {
      try {
        graph->graph.capture_end();
      } catch (...) {
      }
    }
    (void)cudaGetLastError();  // a failed capture leaves an error behind; it is handled here
    DIFFUSE_LOG_WARN("CUDA graph capture failed, running eagerly: {}", e.what());
    enabled_ = false;
  }
  at::cuda::CUDAEvent done;
  done.record(side);
  done.block(caller);
  return result;
}

#else  // libtorch without CUDA: every call is eager.

struct CudaGraphCall::Graph {};

bool CudaGraphCall::supported() { return false; }

CudaGraphCall::CudaGraphCall(Function function, bool enabled) : function_(std::move(function)), enabled_(enabled) {}
CudaGraphCall::~CudaGraphCall() = default;

at::Tensor CudaGraphCall::operator()(const std::vector<at::Tensor>& inputs) {
  replayed_ = false;
  return function_(inputs);
}

#endif

}  // namespace diffuse
