// The Gloo engine: libtorch's c10d::ProcessGroupGloo over the ranks' shared store, for CPU tensors
// (tensors elsewhere are staged through the CPU). Gloo fails an operation itself when a peer's
// connection closes or its timeout passes; this file turns that into an error naming the rank.

#include <ATen/ATen.h>

#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>

#include "diffuse/error.hpp"
#include "distributed/backends.hpp"

// libtorch's header is written for builds that define this; the library itself has Gloo compiled
// in (Debian's libtorch and the PyTorch wheels both do).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#if __has_include(<gloo/context.h>) && __has_include(<torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>)
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#define DIFFUSE_HAS_GLOO 1
#else
#define DIFFUSE_HAS_GLOO 0
#endif

namespace diffuse {
bool gloo_available() { return DIFFUSE_HAS_GLOO != 0; }
}  // namespace diffuse

namespace diffuse::distributed_detail {

#if DIFFUSE_HAS_GLOO
namespace {

// What a failed operation needs to explain itself, shared by the communicator and its Works.
struct GlooState {
  std::shared_ptr<Membership> membership;
  std::string name;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  std::shared_ptr<std::atomic<uint64_t>> progress;
  std::mutex mutex;
  std::string broken;  // the first failure's message; every later call repeats it

  void ensure_usable() {
    std::lock_guard<std::mutex> lock(mutex);
    if (!broken.empty()) throw DistributedError(broken);
  }

  DistributedError failure(const std::string& what, uint64_t op, const std::vector<int>& peers, const std::exception& cause) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!broken.empty()) return DistributedError(broken);
    }
    const Blame blame = membership->diagnose(peers, name, op);
    DistributedError error = membership->fail(what, blame, cause.what());
    std::lock_guard<std::mutex> lock(mutex);
    broken = error.what();
    // Destroy the group now: its sockets to the others close, so that they fail fast too.
    group.reset();
    return error;
  }
};

class GlooWork final : public Work::Impl {
 public:
  GlooWork(std::shared_ptr<GlooState> state, std::vector<c10::intrusive_ptr<c10d::Work>> works, std::string what,
           uint64_t op, std::vector<int> peers, std::function<void()> finish)
      : state_(std::move(state)), works_(std::move(works)), what_(std::move(what)), op_(op),
        peers_(std::move(peers)), finish_(std::move(finish)) {}

  void wait() override {
    if (done_) return;
    try {
      for (auto& work : works_) work->wait();
    } catch (const std::exception& e) {
      throw state_->failure(what_, op_, peers_, e);
    }
    works_.clear();
    if (finish_) finish_();
    done_ = true;
  }

  bool completed() override {
    if (done_) return true;
    for (auto& work : works_)
      if (!work->isCompleted()) return false;
    wait();  // finished in Gloo: collect errors and copy staged outputs back
    return true;
  }

 private:
  std::shared_ptr<GlooState> state_;
  std::vector<c10::intrusive_ptr<c10d::Work>> works_;
  std::string what_;
  uint64_t op_;
  std::vector<int> peers_;
  std::function<void()> finish_;
  bool done_ = false;
};

// A tensor as Gloo sees it: bytes on the CPU. Tensors elsewhere go through a CPU copy, written back
// by finish() for outputs.
struct Staged {
  at::Tensor original;
  at::Tensor cpu;
  at::Tensor bytes;
};

Staged stage(const at::Tensor& tensor, bool copy_in) {
  Staged s{tensor, tensor, {}};
  if (!tensor.device().is_cpu()) s.cpu = copy_in ? tensor.cpu() : at::empty_like(tensor, tensor.options().device(at::kCPU));
  s.bytes = flat_bytes(s.cpu);
  return s;
}

void unstage(const Staged& s) {
  if (!s.original.device().is_cpu()) s.original.copy_(s.cpu);
}

class GlooCommunicator final : public Communicator {
 public:
  explicit GlooCommunicator(const GroupSpec& spec)
      : Communicator(spec.name, spec.rank, spec.global_ranks, spec.device), spec_(spec),
        state_(std::make_shared<GlooState>()) {
    state_->membership = spec.membership;
    state_->name = spec.name;
    state_->progress = spec.membership->register_progress(spec.name);
    const std::string what = "making gloo communicator " + spec.name;
    // Gloo's own rendezvous waits out its timeout on a missing peer; meet first, with names.
    spec.membership->arrive_and_wait("gloo/" + spec.name + "/meet", spec.global_ranks, what);
    try {
      auto options = c10d::ProcessGroupGloo::Options::create(spec.membership->timeout());
      options->devices.push_back(make_device(spec.master_addr));
      auto store = c10::make_intrusive<c10d::PrefixStore>("gloo/" + spec.name, spec.membership->store());
      state_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, spec.rank, size(), options);
    } catch (const std::exception& e) {
      throw state_->failure(what, 0, global_ranks(), e);
    }
  }

  ~GlooCommunicator() override {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->group.reset();
  }

  std::string backend() const override { return "gloo"; }

  Work all_gather_into(const at::Tensor& output, const at::Tensor& input) override {
    const std::string what = label("all_gather");
    check_tensor(input, what, "input");
    check_tensor(output, what, "output");
    if (output.nbytes() != input.nbytes() * static_cast<size_t>(size()))
      throw Error(what + ": output has " + std::to_string(output.nbytes()) + " bytes, expected " +
                  std::to_string(size()) + " x " + std::to_string(input.nbytes()));
    Staged in = stage(input, true), out = stage(output, false);
    const int64_t n = in.bytes.numel();
    return run(what, global_ranks(), [&] {
      std::vector<at::Tensor> inputs = {in.bytes};
      std::vector<std::vector<at::Tensor>> outputs(1);
      for (int i = 0; i < size(); ++i) outputs[0].push_back(out.bytes.narrow(0, i * n, n));
      return std::vector{group()->allgather(outputs, inputs)};
    }, [in, out] { unstage(out); });
  }

  Work all_to_all_into(const at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& output_splits,
                       const std::vector<int64_t>& input_splits) override {
    const std::string what = label("all_to_all");
    check_tensor(input, what, "input");
    check_tensor(output, what, "output");
    std::vector<int64_t> out_bytes = byte_splits(output, output_splits, size(), what, "output");
    std::vector<int64_t> in_bytes = byte_splits(input, input_splits, size(), what, "input");
    Staged in = stage(input, true), out = stage(output, false);
    return run(what, global_ranks(), [&] {
      return std::vector{group()->alltoall_base(out.bytes, in.bytes, out_bytes, in_bytes)};
    }, [in, out] { unstage(out); });
  }

  Work broadcast_into(const at::Tensor& tensor, int root) override {
    const std::string what = label("broadcast");
    check_tensor(tensor, what, "broadcast");
    check_member(root, what);
    Staged t = stage(tensor, true);
    return run(what, global_ranks(), [&] {
      std::vector<at::Tensor> tensors = {t.bytes};
      c10d::BroadcastOptions options;
      options.rootRank = root;
      return std::vector{group()->broadcast(tensors, options)};
    }, [t] { unstage(t); });
  }

  Work send(const at::Tensor& tensor, int dst) override {
    const std::string what = label("send");
    check_tensor(tensor, what, "send");
    check_member(dst, what);
    Staged t = stage(tensor, true);
    return run(what, {global_ranks()[static_cast<size_t>(dst)]}, [&] {
      std::vector<at::Tensor> tensors = {t.bytes};
      return std::vector{group()->send(tensors, dst, next_tag(sends_, dst))};
    }, [t] {});
  }

  Work recv(const at::Tensor& tensor, int src) override {
    const std::string what = label("recv");
    check_tensor(tensor, what, "recv");
    check_member(src, what);
    Staged t = stage(tensor, false);
    return run(what, {global_ranks()[static_cast<size_t>(src)]}, [&] {
      std::vector<at::Tensor> tensors = {t.bytes};
      return std::vector{group()->recv(tensors, src, next_tag(recvs_, src))};
    }, [t] { unstage(t); });
  }

  Work send_recv(const at::Tensor& send_tensor, int dst, const at::Tensor& recv_tensor, int src) override {
    const std::string what = label("send_recv");
    check_tensor(send_tensor, what, "send");
    check_tensor(recv_tensor, what, "recv");
    check_member(dst, what);
    check_member(src, what);
    Staged out = stage(send_tensor, true), in = stage(recv_tensor, false);
    return run(what, {global_ranks()[static_cast<size_t>(dst)], global_ranks()[static_cast<size_t>(src)]}, [&] {
      std::vector<at::Tensor> receiving = {in.bytes}, sending = {out.bytes};
      // The receive is posted first, so that every member sending at once finds a taker.
      auto r = group()->recv(receiving, src, next_tag(recvs_, src));
      auto s = group()->send(sending, dst, next_tag(sends_, dst));
      return std::vector{r, s};
    }, [out, in] { unstage(in); });
  }

  void barrier() override {
    const std::string what = label("barrier");
    run(what, global_ranks(), [&] { return std::vector{group()->barrier()}; }, {}).wait();
  }

  std::shared_ptr<Communicator> split(int color, int key) override {
    state_->ensure_usable();
    const SplitPlan plan = plan_split(spec_, splits_++, color, key);
    if (!plan.member) return nullptr;
    return std::make_shared<GlooCommunicator>(plan.spec);
  }

 private:
  static std::shared_ptr<::gloo::transport::Device> make_device(const std::string& master_addr) {
    if (const char* name = std::getenv("GLOO_SOCKET_IFNAME"); name != nullptr && *name != '\0')
      return c10d::ProcessGroupGloo::createDeviceForInterface(name);
    // On one machine the loopback always works; the host name may not resolve in containers.
    if (master_addr.empty() || master_addr == "localhost" || master_addr.rfind("127.", 0) == 0)
      return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
    return c10d::ProcessGroupGloo::createDefaultDevice();
  }

  std::string label(const char* op) const {
    return std::string("gloo ") + op + " #" + std::to_string(state_->progress->load() + 1) + " on " + name();
  }

  void check_member(int member, const std::string& what) const {
    if (member < 0 || member >= size())
      throw Error(what + ": member " + std::to_string(member) + " outside [0, " + std::to_string(size()) + ")");
  }

  c10::intrusive_ptr<c10d::ProcessGroupGloo> group() {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (!state_->group) throw Error(state_->broken.empty() ? "gloo communicator " + name() + " is closed" : state_->broken);
    return state_->group;
  }

  // Tags pair each send with the peer's matching recv: the n-th message from a to b has tag n.
  static int next_tag(std::map<int, int>& counters, int peer) { return counters[peer]++; }

  Work run(const std::string& what, const std::vector<int>& peers,
           const std::function<std::vector<c10::intrusive_ptr<c10d::Work>>()>& launch, std::function<void()> finish) {
    state_->ensure_usable();
    const uint64_t op = ++*state_->progress;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    try {
      works = launch();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw state_->failure(what, op, peers, e);
    }
    return Work(std::make_shared<GlooWork>(state_, std::move(works), what, op, peers, std::move(finish)));
  }

  GroupSpec spec_;
  std::shared_ptr<GlooState> state_;
  uint64_t splits_ = 0;
  std::map<int, int> sends_, recvs_;
};

}  // namespace

std::shared_ptr<Communicator> make_gloo_communicator(const GroupSpec& spec) {
  return std::make_shared<GlooCommunicator>(spec);
}

#else

std::shared_ptr<Communicator> make_gloo_communicator(const GroupSpec& spec) {
  throw Error("communicator " + spec.name + ": this libtorch has no Gloo headers (gloo/*.h), so diffuse was built "
              "without its Gloo engine; use NCCL with CUDA tensors");
}

#endif

}  // namespace diffuse::distributed_detail
