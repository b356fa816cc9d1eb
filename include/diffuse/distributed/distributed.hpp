#pragma once
// The process group: which process this is among how many, where it computes, and how it talks to
// the others.
//
//   auto dist = diffuse::Distributed::init();   // RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//   pipe.to(dist.device().str());                // cuda:LOCAL_RANK when there is CUDA
//   for (auto& prompt : dist.split_between_processes(prompts)) ...
//
// The variables are torchrun's, so `torchrun --no-python`, `diffuse-launch` or srun (exporting them)
// start the processes. None set means a world of one. The ranks meet through libtorch's c10d
// TCPStore, which rank 0 hosts at MASTER_ADDR:MASTER_PORT (under torchrun, its agent hosts it).
//
// Failure: every wait on other ranks (the meeting, barriers, gathers, collectives) ends within the
// timeout, and sooner when a rank has exited or died (each rank publishes a heartbeat), with a
// diffuse::Error that names the rank at fault. docs/distributed.md has the details.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/distributed/communicator.hpp"
#include "diffuse/distributed/split.hpp"

namespace diffuse {

struct DistributedOptions {
  // Where this process computes: default cuda:LOCAL_RANK when libtorch sees a GPU, else "cpu".
  std::optional<std::string> device;
  // The world communicator's engine, "nccl" or "gloo". Default: nccl on a CUDA device when diffuse
  // was built with NCCL, else gloo.
  std::optional<std::string> backend;
  // How long any wait on other ranks may last before it fails. Default: $DIFFUSE_DIST_TIMEOUT
  // (seconds) when set, else 10 minutes.
  std::optional<std::chrono::milliseconds> timeout;
};

// Which communication engines this build has: Gloo (CPU tensors; absent when the libtorch it was
// built against ships no Gloo headers, as the CUDA wheels do) and NCCL (CUDA tensors; needs CUDA
// libtorch and NCCL at build time).
bool gloo_available();
bool nccl_available();

class Distributed {
 public:
  // Reads the environment, meets every rank (all must call it) and returns this process's view.
  // Throws diffuse::Error for bad variables, an unreachable store, or ranks that do not arrive.
  static Distributed init(DistributedOptions options = {});

  Distributed(Distributed&&) noexcept;
  Distributed& operator=(Distributed&&) noexcept;
  // Tells the others that this rank leaves and closes its communicators. Rank 0, which hosts the
  // store, first waits (within the timeout) until every other rank has left or died.
  ~Distributed();

  int rank() const;
  int world_size() const;
  int local_rank() const;
  int local_world_size() const;
  c10::Device device() const;
  bool is_main_process() const { return rank() == 0; }
  bool is_local_main_process() const { return local_rank() == 0; }
  std::chrono::milliseconds timeout() const;

  // Returns once every rank has called it; fails naming the ranks that did not come.
  void barrier();
  // The communicator over all ranks, on device() (backend per DistributedOptions). Made on first use,
  // which is a collective: every rank must ask for it.
  Communicator& communicator();
  // The same communicator, shared, for objects that keep it (a pipeline's context-parallel mesh).
  std::shared_ptr<Communicator> shared_communicator();

  // This rank's contiguous share of items (Accelerate's semantics; see split.hpp).
  template <class T>
  std::vector<T> split_between_processes(const std::vector<T>& items, bool apply_padding = false) const {
    return diffuse::split_between_processes(items, rank(), world_size(), apply_padding);
  }
  // The indices of that share, e.g. for a per-item seed.
  std::vector<int64_t> process_indices(int64_t n, bool apply_padding = false) const {
    return diffuse::process_indices(n, rank(), world_size(), apply_padding);
  }

  // Collective. Rank 0 gets every rank's tensor concatenated along dim 0, in rank order (dim 0 may
  // differ between ranks, the rest must agree); the other ranks get an undefined tensor.
  at::Tensor gather_to_main(const at::Tensor& tensor);
  // Collective. Rank 0 gets every rank's strings in rank order; the others get nothing.
  std::vector<std::string> gather_to_main(const std::vector<std::string>& items);

  struct State;

 private:
  explicit Distributed(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace diffuse
