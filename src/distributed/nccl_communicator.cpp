// The NCCL engine, for CUDA tensors (built only when NCCL is found; see CMakeLists.txt).
//
// - Made with ncclCommInitRankConfig from a unique id that member 0 puts in the store; sub-groups
//   with ncclCommSplit. Communicators are non-blocking (config.blocking = 0), so that no NCCL call
//   can hold the host forever: every call is followed by polling ncclCommGetAsyncError under a
//   deadline, watching the other ranks' heartbeats meanwhile.
// - Operations run on the communicator's own CUDA stream: an event recorded on the caller's current
//   stream orders them after the work that produced their inputs, and Work::wait() makes the
//   caller's stream wait on an event recorded after them. Tensors stay referenced until the device
//   has finished with them.
// - A watchdog thread follows the operations in flight. When one outlives the timeout, NCCL reports
//   an error, or a member leaves or dies, it aborts the communicator (ncclCommAbort, which also ends
//   the kernels still waiting) and keeps the error, which every later call throws.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "diffuse/error.hpp"
#include "distributed/backends.hpp"

namespace diffuse::distributed_detail {
namespace {

std::string nccl_error(ncclResult_t result, ncclComm_t comm) {
  std::string text = std::string("NCCL error ") + std::to_string(static_cast<int>(result)) + ": " +
                     ncclGetErrorString(result);
  if (comm != nullptr) {
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && *last != '\0') text += " (" + std::string(last) + ")";
  }
  return text;
}

std::string seconds_text(Milliseconds ms) { return std::to_string(ms.count() / 1000.0).substr(0, 5) + " s"; }

// What the communicator, its Works and its watchdog share.
struct NcclState {
  std::shared_ptr<Membership> membership;
  std::string name;
  std::vector<int> global_ranks;
  c10::Device device = c10::kCPU;
  std::shared_ptr<std::atomic<uint64_t>> progress;

  std::mutex mutex;  // comm and every NCCL call on it; broken
  ncclComm_t comm = nullptr;
  std::string broken;

  struct InFlight {
    std::shared_ptr<at::cuda::CUDAEvent> done;
    Clock::time_point start;
    std::string what;
    uint64_t op = 0;
    std::vector<int> peers;
    std::vector<at::Tensor> keep;  // inputs and outputs, alive until the device is done with them
  };
  std::mutex flight_mutex;
  std::deque<InFlight> flight;
  std::condition_variable wake;
  bool stop = false;
  std::thread watchdog;

  void ensure_usable() {
    std::lock_guard<std::mutex> lock(mutex);
    if (!broken.empty()) throw DistributedError(broken);
    if (comm == nullptr) throw Error("nccl communicator " + name + " is closed");
  }

  // Records the failure (once), aborts the communicator and returns the error to throw.
  DistributedError fail(const std::string& what, const Blame& blame, const std::string& cause) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!broken.empty()) return DistributedError(broken);
    }
    DistributedError error = membership->fail(what, blame, cause);
    std::lock_guard<std::mutex> lock(mutex);
    if (!broken.empty()) return DistributedError(broken);
    broken = error.what();
    if (comm != nullptr) {
      ncclCommAbort(comm);  // also ends the kernels that wait for a peer that will never come
      comm = nullptr;
    }
    return error;
  }

  DistributedError fail(const std::string& what, uint64_t op, const std::vector<int>& peers, const std::string& cause) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!broken.empty()) return DistributedError(broken);
    }
    return fail(what, membership->diagnose(peers, name, op), cause);
  }

  // Polls a non-blocking communicator until its last call has completed on the host side.
  void settle(ncclComm_t c, const std::string& what, uint64_t op, const std::vector<int>& peers,
              Clock::time_point deadline) {
    auto pause = std::chrono::microseconds(10);
    auto next_check = Clock::now() + membership->interval();
    while (true) {
      ncclResult_t state = ncclSuccess;
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (!broken.empty()) throw DistributedError(broken);
        const ncclResult_t r = ncclCommGetAsyncError(c, &state);
        if (r != ncclSuccess) state = r;
      }
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) throw fail(what, op, peers, nccl_error(state, c));
      const auto now = Clock::now();
      if (now >= next_check) {
        if (auto blame = membership->departed(peers)) throw fail(what, *blame, "");
        next_check = now + membership->interval();
      }
      if (now >= deadline)
        throw fail(what, op, peers, "NCCL did not finish within " + seconds_text(membership->timeout()));
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

  void watch() {
    try {
      watch_loop();
    } catch (const std::exception& e) {
      // Nothing may escape a thread; the failure is kept for the next call.
      std::lock_guard<std::mutex> lock(mutex);
      if (broken.empty()) broken = "nccl communicator " + name + ": its watchdog failed: " + e.what();
      if (comm != nullptr) ncclCommAbort(comm);
      comm = nullptr;
    }
  }

  void watch_loop() {
    c10::cuda::CUDAGuard guard(device);
    auto next_check = Clock::now();
    std::unique_lock<std::mutex> lock(flight_mutex);
    while (!stop) {
      wake.wait_for(lock, flight.empty() ? std::chrono::milliseconds(100) : std::chrono::milliseconds(2));
      while (!flight.empty() && flight.front().done->query()) flight.pop_front();
      if (flight.empty() || stop) continue;
      const InFlight oldest{flight.front().done, flight.front().start, flight.front().what, flight.front().op,
                            flight.front().peers, {}};
      lock.unlock();
      const auto now = Clock::now();
      std::optional<Error> error;
      {
        ncclResult_t state = ncclSuccess;
        std::unique_lock<std::mutex> comm_lock(mutex);
        const bool usable = comm != nullptr && broken.empty();
        if (usable) ncclCommGetAsyncError(comm, &state);
        const ncclComm_t c = comm;
        comm_lock.unlock();
        if (!usable) {
          lock.lock();
          flight.clear();  // aborted: the kernels have ended
          continue;
        }
        if (state != ncclSuccess && state != ncclInProgress)
          error = fail(oldest.what, oldest.op, oldest.peers, nccl_error(state, c));
      }
      if (!error && now - oldest.start > membership->timeout())
        error = fail(oldest.what, oldest.op, oldest.peers,
                     "it did not finish within " + seconds_text(membership->timeout()));
      if (!error && now - oldest.start > membership->interval() && now >= next_check) {
        if (auto blame = membership->departed(global_ranks)) error = fail(oldest.what, *blame, "");
        next_check = now + membership->interval();
      }
      lock.lock();
    }
  }

  // Ends the communicator: finalized and destroyed when all went well, else aborted.
  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(flight_mutex);
      stop = true;
    }
    wake.notify_all();
    if (watchdog.joinable()) watchdog.join();
    std::lock_guard<std::mutex> lock(mutex);
    if (comm == nullptr) return;
    c10::cuda::CUDAGuard guard(device);
    // Finalizing waits for the others to finalize too; a member that has gone must not hold us.
    const auto deadline = Clock::now() + std::min<Milliseconds>(membership->timeout(), Milliseconds(10000));
    bool clean = broken.empty();
    for (auto& f : flight)
      while (clean && !f.done->query()) {
        if (Clock::now() > deadline) clean = false;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    if (clean && ncclCommFinalize(comm) == ncclSuccess) {
      ncclResult_t state = ncclInProgress;
      while (Clock::now() < deadline) {
        if (ncclCommGetAsyncError(comm, &state) != ncclSuccess || state != ncclInProgress) break;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      clean = state == ncclSuccess;
    } else {
      clean = false;
    }
    if (clean) ncclCommDestroy(comm);
    else ncclCommAbort(comm);
    comm = nullptr;
    flight.clear();
  }
};

class NcclWork final : public Work::Impl {
 public:
  NcclWork(std::shared_ptr<NcclState> state, std::shared_ptr<at::cuda::CUDAEvent> done)
      : state_(std::move(state)), done_(std::move(done)) {}

  void wait() override {
    state_->ensure_usable();
    done_->block(c10::cuda::getCurrentCUDAStream(state_->device.index()));
  }

  bool completed() override {
    state_->ensure_usable();
    return done_->query();
  }

 private:
  std::shared_ptr<NcclState> state_;
  std::shared_ptr<at::cuda::CUDAEvent> done_;
};

ncclConfig_t nonblocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

class NcclCommunicator final : public Communicator {
 public:
  // A new communicator over spec's members, from a unique id shared through the store.
  explicit NcclCommunicator(const GroupSpec& spec) : NcclCommunicator(spec, nullptr) {
    const std::string what = "making nccl communicator " + name();
    const std::string id_key = "nccl/" + name() + "/id";
    if (rank() == 0) {
      ncclUniqueId id;
      const ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) throw Error(what + ": " + nccl_error(r, nullptr));
      spec.membership->set(id_key, std::string(id.internal, sizeof id.internal));
    }
    spec.membership->arrive_and_wait("nccl/" + name() + "/meet", global_ranks(), what);
    const auto value = spec.membership->try_get(id_key);
    if (!value || value->size() != sizeof(ncclUniqueId)) throw Error(what + ": the unique id from member 0 is missing");
    ncclUniqueId id;
    std::memcpy(id.internal, value->data(), sizeof id.internal);
    ncclConfig_t config = nonblocking_config();
    ncclComm_t comm = nullptr;
    {
      c10::cuda::CUDAGuard guard(device());
      const ncclResult_t r = ncclCommInitRankConfig(&comm, size(), id, rank(), &config);
      if (r != ncclSuccess && r != ncclInProgress) throw Error(what + ": " + nccl_error(r, comm));
    }
    adopt(comm, what);
  }

  // Wraps a communicator that ncclCommSplit made (null: made by the caller afterwards).
  NcclCommunicator(const GroupSpec& spec, ncclComm_t comm)
      : Communicator(spec.name, spec.rank, spec.global_ranks, spec.device), spec_(spec),
        state_(std::make_shared<NcclState>()) {
    if (!spec.device.is_cuda() || !spec.device.has_index())
      throw Error("nccl communicator " + spec.name + " needs a CUDA device with an index, not " + spec.device.str());
    state_->membership = spec.membership;
    state_->name = spec.name;
    state_->global_ranks = spec.global_ranks;
    state_->device = spec.device;
    state_->progress = spec.membership->register_progress(spec.name);
    c10::cuda::CUDAGuard guard(device());
    stream_ = c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device().index());
    if (comm != nullptr) adopt(comm, "making nccl communicator " + name());
  }

  ~NcclCommunicator() override { state_->shutdown(); }

  std::string backend() const override { return "nccl"; }

  Work all_gather_into(const at::Tensor& output, const at::Tensor& input) override {
    const std::string what = label("all_gather");
    check(input, what, "input");
    check(output, what, "output");
    if (output.nbytes() != input.nbytes() * static_cast<size_t>(size()))
      throw Error(what + ": output has " + std::to_string(output.nbytes()) + " bytes, expected " +
                  std::to_string(size()) + " x " + std::to_string(input.nbytes()));
    return enqueue(what, global_ranks(), {input, output}, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclAllGather(input.data_ptr(), output.data_ptr(), input.nbytes(), ncclUint8, comm, stream);
    });
  }

  Work all_to_all_into(const at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& output_splits,
                       const std::vector<int64_t>& input_splits) override {
    const std::string what = label("all_to_all");
    check(input, what, "input");
    check(output, what, "output");
    const std::vector<int64_t> out_bytes = byte_splits(output, output_splits, size(), what, "output");
    const std::vector<int64_t> in_bytes = byte_splits(input, input_splits, size(), what, "input");
    // Grouped sends and receives, one pair per member; this member's own part is a copy.
    return enqueue(what, global_ranks(), {input, output}, [&](ncclComm_t comm, cudaStream_t stream) {
      auto* in = static_cast<const uint8_t*>(input.data_ptr());
      auto* out = static_cast<uint8_t*>(output.data_ptr());
      int64_t in_at = 0, out_at = 0;
      ncclResult_t result = ncclSuccess;
      for (int peer = 0; peer < size(); ++peer) {
        const auto n_in = static_cast<size_t>(in_bytes[static_cast<size_t>(peer)]);
        const auto n_out = static_cast<size_t>(out_bytes[static_cast<size_t>(peer)]);
        if (peer == rank()) {
          if (n_in != n_out)
            throw Error(what + ": this member sends itself " + std::to_string(n_in) + " bytes but expects " +
                        std::to_string(n_out));
          if (n_in > 0 && cudaMemcpyAsync(out + out_at, in + in_at, n_in, cudaMemcpyDeviceToDevice, stream) != cudaSuccess)
            throw Error(what + ": copying this member's own part failed");
        } else {
          if (n_in > 0 && result == ncclSuccess) result = ncclSend(in + in_at, n_in, ncclUint8, peer, comm, stream);
          if (n_out > 0 && result == ncclSuccess) result = ncclRecv(out + out_at, n_out, ncclUint8, peer, comm, stream);
        }
        in_at += static_cast<int64_t>(n_in);
        out_at += static_cast<int64_t>(n_out);
      }
      return result;
    });
  }

  Work broadcast_into(const at::Tensor& tensor, int root) override {
    const std::string what = label("broadcast");
    check(tensor, what, "broadcast");
    check_member(root, what);
    return enqueue(what, global_ranks(), {tensor}, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.nbytes(), ncclUint8, root, comm, stream);
    });
  }

  Work send(const at::Tensor& tensor, int dst) override {
    const std::string what = label("send");
    check(tensor, what, "send");
    check_member(dst, what);
    return enqueue(what, {global_ranks()[static_cast<size_t>(dst)]}, {tensor}, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclSend(tensor.data_ptr(), tensor.nbytes(), ncclUint8, dst, comm, stream);
    });
  }

  Work recv(const at::Tensor& tensor, int src) override {
    const std::string what = label("recv");
    check(tensor, what, "recv");
    check_member(src, what);
    return enqueue(what, {global_ranks()[static_cast<size_t>(src)]}, {tensor}, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclRecv(tensor.data_ptr(), tensor.nbytes(), ncclUint8, src, comm, stream);
    });
  }

  Work send_recv(const at::Tensor& send_tensor, int dst, const at::Tensor& recv_tensor, int src) override {
    const std::string what = label("send_recv");
    check(send_tensor, what, "send");
    check(recv_tensor, what, "recv");
    check_member(dst, what);
    check_member(src, what);
    const std::vector<int> peers = {global_ranks()[static_cast<size_t>(dst)], global_ranks()[static_cast<size_t>(src)]};
    return enqueue(what, peers, {send_tensor, recv_tensor}, [&](ncclComm_t comm, cudaStream_t stream) {
      ncclResult_t r = ncclSend(send_tensor.data_ptr(), send_tensor.nbytes(), ncclUint8, dst, comm, stream);
      if (r == ncclSuccess) r = ncclRecv(recv_tensor.data_ptr(), recv_tensor.nbytes(), ncclUint8, src, comm, stream);
      return r;
    });
  }

  void barrier() override {
    // A one-byte all-gather, then the host waits for it (the watchdog bounds the wait).
    const at::Tensor byte = at::zeros({1}, at::TensorOptions().dtype(at::kByte).device(device()));
    const at::Tensor all = at::empty({size()}, byte.options());
    const std::string what = label("barrier");
    const auto done = launch(what, global_ranks(), {byte, all}, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclAllGather(byte.data_ptr(), all.data_ptr(), 1, ncclUint8, comm, stream);
    });
    auto pause = std::chrono::microseconds(20);
    while (!done->query()) {
      state_->ensure_usable();
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(2000));
    }
    state_->ensure_usable();
  }

  std::shared_ptr<Communicator> split(int color, int key) override {
    state_->ensure_usable();
    const uint64_t n = splits_++;
    const SplitPlan plan = plan_split(spec_, n, color, key);
    const std::string what = "split #" + std::to_string(n) + " of nccl communicator " + name();
    ncclConfig_t config = nonblocking_config();
    ncclComm_t child = nullptr;
    {
      c10::cuda::CUDAGuard guard(device());
      std::lock_guard<std::mutex> lock(state_->mutex);
      const ncclResult_t r = ncclCommSplit(state_->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child, &config);
      if (r != ncclSuccess && r != ncclInProgress) throw Error(what + ": " + nccl_error(r, state_->comm));
    }
    const auto deadline = Clock::now() + state_->membership->timeout();
    state_->settle(state_->comm, what, 0, global_ranks(), deadline);
    if (!plan.member) {
      if (child != nullptr) ncclCommAbort(child);
      return nullptr;
    }
    if (child == nullptr) throw Error(what + ": NCCL returned no communicator for color " + std::to_string(color));
    return std::make_shared<NcclCommunicator>(plan.spec, child);
  }

 private:
  // Takes ownership of a communicator being made, waits until it is ready, starts the watchdog.
  void adopt(ncclComm_t comm, const std::string& what) {
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->comm = comm;
    }
    try {
      state_->settle(comm, what, 0, global_ranks(), Clock::now() + state_->membership->timeout());
    } catch (...) {
      std::lock_guard<std::mutex> lock(state_->mutex);
      if (state_->comm != nullptr) ncclCommAbort(state_->comm);
      state_->comm = nullptr;
      throw;
    }
    state_->watchdog = std::thread([state = state_.get()] { state->watch(); });
  }

  std::string label(const char* op) const {
    return std::string("nccl ") + op + " #" + std::to_string(state_->progress->load() + 1) + " on " + name();
  }

  void check(const at::Tensor& tensor, const std::string& what, const char* role) const {
    check_tensor(tensor, what, role);
    if (tensor.device() != device())
      throw Error(what + ": the " + role + " tensor is on " + tensor.device().str() + ", the communicator on " +
                  device().str());
  }

  void check_member(int member, const std::string& what) const {
    if (member < 0 || member >= size())
      throw Error(what + ": member " + std::to_string(member) + " outside [0, " + std::to_string(size()) + ")");
  }

  using Launch = std::function<ncclResult_t(ncclComm_t, cudaStream_t)>;

  Work enqueue(const std::string& what, const std::vector<int>& peers, std::vector<at::Tensor> keep,
               const Launch& calls) {
    return Work(std::make_shared<NcclWork>(state_, launch(what, peers, std::move(keep), calls)));
  }

  // Queues the NCCL calls on the communication stream; returns the event recorded after them.
  std::shared_ptr<at::cuda::CUDAEvent> launch(const std::string& what, const std::vector<int>& peers,
                                               std::vector<at::Tensor> keep, const Launch& calls) {
    state_->ensure_usable();
    const uint64_t op = ++*state_->progress;
    c10::cuda::CUDAGuard guard(device());
    // After the work already queued on the caller's stream (which produced the inputs).
    at::cuda::CUDAEvent ready;
    ready.record(c10::cuda::getCurrentCUDAStream(device().index()));
    ready.block(stream_);
    ncclComm_t comm = nullptr;
    ncclResult_t result = ncclSuccess;
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      if (!state_->broken.empty()) throw Error(state_->broken);
      comm = state_->comm;
      ncclGroupStart();
      try {
        result = calls(comm, stream_.stream());
      } catch (...) {
        ncclGroupEnd();
        throw;
      }
      const ncclResult_t end = ncclGroupEnd();
      if (result == ncclSuccess) result = end;
    }
    if (result != ncclSuccess && result != ncclInProgress) throw state_->fail(what, op, peers, nccl_error(result, comm));
    state_->settle(comm, what, op, peers, Clock::now() + state_->membership->timeout());
    auto done = std::make_shared<at::cuda::CUDAEvent>();
    done->record(stream_);
    {
      std::lock_guard<std::mutex> lock(state_->flight_mutex);
      state_->flight.push_back({done, Clock::now(), what, op, peers, std::move(keep)});
    }
    state_->wake.notify_all();
    return done;
  }

  GroupSpec spec_;
  std::shared_ptr<NcclState> state_;
  c10::cuda::CUDAStream stream_ = c10::cuda::getDefaultCUDAStream();
  uint64_t splits_ = 0;
};

}  // namespace

std::shared_ptr<Communicator> make_nccl_communicator(const GroupSpec& spec) {
  return std::make_shared<NcclCommunicator>(spec);
}

}  // namespace diffuse::distributed_detail
