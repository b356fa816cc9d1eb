#include "diffuse/distributed/distributed.hpp"

#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <thread>

#include "diffuse/error.hpp"
#include "distributed/backends.hpp"
#include "distributed/membership.hpp"
#include "log.hpp"

namespace diffuse {

using distributed_detail::GroupSpec;
using distributed_detail::Membership;
using distributed_detail::Clock;
using distributed_detail::Milliseconds;

struct Distributed::State {
  int rank = 0;
  int world = 1;
  int local_rank = 0;
  int local_world = 1;
  c10::Device device = c10::kCPU;
  std::string backend;
  std::string master_addr;
  Milliseconds timeout{0};
  bool hosts_store = false;
  std::shared_ptr<Membership> membership;
  std::shared_ptr<Communicator> world_communicator;
  uint64_t barriers = 0;
  uint64_t gathers = 0;
};

namespace {

std::optional<std::string> env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

int env_int(const char* name, const std::string& value) {
  try {
    size_t used = 0;
    const int parsed = std::stoi(value, &used);
    if (used == value.size()) return parsed;
  } catch (const std::exception&) {
  }
  throw Error(std::string("environment variable ") + name + "='" + value + "' is not an integer");
}

Milliseconds default_timeout() {
  if (const auto value = env("DIFFUSE_DIST_TIMEOUT")) {
    try {
      size_t used = 0;
      const double seconds = std::stod(*value, &used);
      if (used == value->size() && seconds > 0) return Milliseconds(static_cast<int64_t>(seconds * 1000));
    } catch (const std::exception&) {
    }
    throw Error("DIFFUSE_DIST_TIMEOUT='" + *value + "' is not a positive number of seconds");
  }
  return std::chrono::minutes(10);
}

// Heartbeats often enough that a dead rank is noticed within a small part of the timeout.
Milliseconds heartbeat_interval(Milliseconds timeout) {
  return std::clamp<Milliseconds>(timeout / 20, Milliseconds(50), Milliseconds(2000));
}

c10::Device choose_device(const DistributedOptions& options, int local_rank) {
  if (options.device) {
    c10::Device device(*options.device);
    if (device.is_cuda() && !device.has_index()) device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
    return device;
  }
  if (!at::hasCUDA()) return c10::kCPU;
  const auto count = static_cast<int>(at::getNumGPUs());
  if (count == 0) return c10::kCPU;
  if (local_rank >= count)
    throw Error("LOCAL_RANK " + std::to_string(local_rank) + " has no GPU of its own: " + std::to_string(count) +
                " visible (start at most one process per GPU, or pass DistributedOptions::device)");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

// Waits until something accepts connections at addr:port. libtorch's store client retries only once
// a second; polling here first saves most of that second when rank 0 starts a little late.
void wait_until_listening(const std::string& addr, int port, Clock::time_point deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(addr.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || found == nullptr) return;
  auto pause = std::chrono::milliseconds(5);
  while (Clock::now() < deadline) {
    bool connected = false;
    for (addrinfo* a = found; a != nullptr && !connected; a = a->ai_next) {
      const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (fd < 0) continue;
      connected = connect(fd, a->ai_addr, a->ai_addrlen) == 0;
      close(fd);
    }
    if (connected) break;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(100));
  }
  freeaddrinfo(found);
}

// A rank writing to a peer that died must get an error, not be killed by SIGPIPE.
void ignore_sigpipe() {
  struct sigaction current {};
  if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) std::signal(SIGPIPE, SIG_IGN);
}

}  // namespace

bool nccl_available() { return DIFFUSE_HAS_NCCL != 0; }

Distributed Distributed::init(DistributedOptions options) {
  auto state = std::make_unique<State>();
  const auto rank_env = env("RANK");
  const auto world_env = env("WORLD_SIZE");
  if (rank_env.has_value() != world_env.has_value())
    throw Error(std::string(rank_env ? "RANK" : "WORLD_SIZE") + " is set but " + (rank_env ? "WORLD_SIZE" : "RANK") +
                " is not (start the processes with diffuse-launch or torchrun, or set neither)");
  if (rank_env) {
    state->rank = env_int("RANK", *rank_env);
    state->world = env_int("WORLD_SIZE", *world_env);
    if (state->world < 1) throw Error("WORLD_SIZE=" + *world_env + " must be at least 1");
    if (state->rank < 0 || state->rank >= state->world)
      throw Error("RANK=" + *rank_env + " is outside [0, WORLD_SIZE=" + *world_env + ")");
    const auto local_rank = env("LOCAL_RANK");
    const auto local_world = env("LOCAL_WORLD_SIZE");
    state->local_rank = local_rank ? env_int("LOCAL_RANK", *local_rank) : state->rank;
    state->local_world = local_world ? env_int("LOCAL_WORLD_SIZE", *local_world) : state->world;
  }
  state->timeout = options.timeout ? *options.timeout : default_timeout();
  if (state->timeout.count() <= 0) throw Error("DistributedOptions::timeout must be positive");
  state->device = choose_device(options, state->local_rank);
  if (state->device.is_cuda()) c10::impl::getDeviceGuardImpl(c10::kCUDA)->setDevice(state->device);

  state->backend = options.backend ? *options.backend : (state->device.is_cuda() && DIFFUSE_HAS_NCCL ? "nccl" : "gloo");
  if (state->backend != "gloo" && state->backend != "nccl")
    throw Error("unknown communication backend '" + state->backend + "' (expected nccl or gloo)");
  if (state->backend == "nccl" && !DIFFUSE_HAS_NCCL)
    throw Error("backend nccl: this build of diffuse has no NCCL (it needs CUDA libtorch and NCCL at build time)");
  if (state->backend == "nccl" && !state->device.is_cuda())
    throw Error("backend nccl needs a CUDA device, not " + state->device.str());

  Membership::Options membership;
  membership.rank = state->rank;
  membership.world = state->world;
  membership.timeout = state->timeout;
  membership.interval = heartbeat_interval(state->timeout);

  if (state->world == 1 && !rank_env) {
    // A world of one needs nobody to meet: an in-process store, no heartbeat.
    state->membership = std::make_shared<Membership>(c10::make_intrusive<c10d::HashStore>(),
                                                     c10::intrusive_ptr<c10d::Store>(), membership);
  } else {
    ignore_sigpipe();
    const auto addr = env("MASTER_ADDR");
    const auto port = env("MASTER_PORT");
    if (!addr || !port)
      throw Error(std::string(!addr ? "MASTER_ADDR" : "MASTER_PORT") +
                  " is not set (RANK and WORLD_SIZE are; the launcher sets all of them)");
    state->master_addr = *addr;
    const int port_number = env_int("MASTER_PORT", *port);
    if (port_number <= 0 || port_number > 65535) throw Error("MASTER_PORT=" + *port + " is not a TCP port");
    // Under torchrun the agent hosts the store at MASTER_PORT and every worker is a client.
    const bool agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
    state->hosts_store = state->rank == 0 && !agent_store;
    membership.store_owner = agent_store ? "torchrun's agent" : "rank 0";
    const std::string where = *addr + ":" + *port;

    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(port_number);
    store_options.isServer = state->hosts_store;
    store_options.waitWorkers = false;
    store_options.timeout = state->timeout;
    c10::intrusive_ptr<c10d::Store> store, heartbeat_store;
    if (!state->hosts_store) wait_until_listening(*addr, port_number, Clock::now() + state->timeout);
    try {
      try {
        store = c10::make_intrusive<c10d::TCPStore>(*addr, store_options);
      } catch (const std::exception&) {
        if (!state->hosts_store) throw;
        // The port is taken: a launcher may host the store there (torchrun without its variable).
        store_options.isServer = false;
        store_options.timeout = std::min<Milliseconds>(state->timeout, Milliseconds(5000));
        store = c10::make_intrusive<c10d::TCPStore>(*addr, store_options);
        store_options.timeout = state->timeout;
        state->hosts_store = false;
        membership.store_owner = "the launcher at " + where;
      }
      store_options.isServer = false;
      heartbeat_store = c10::make_intrusive<c10d::TCPStore>(*addr, store_options);
    } catch (const std::exception& e) {
      const std::string cause = std::string(e.what()).substr(0, std::string(e.what()).find('\n'));
      if (state->hosts_store)
        throw Error("rank 0 could not host the rendezvous store at " + where + ": " + cause);
      throw Error("rank " + std::to_string(state->rank) + " could not reach the rendezvous store at " + where +
                  " (hosted by " + membership.store_owner + ") within " + std::to_string(state->timeout.count() / 1000.0) +
                  " s: " + cause);
    }
    std::string prefix = "diffuse";
    if (agent_store) prefix = "/worker/attempt_" + env("TORCHELASTIC_RESTART_COUNT").value_or("0") + "/diffuse";
    state->membership = std::make_shared<Membership>(c10::make_intrusive<c10d::PrefixStore>(prefix, store),
                                                     c10::make_intrusive<c10d::PrefixStore>(prefix, heartbeat_store),
                                                     membership);
    std::vector<int> everyone(static_cast<size_t>(state->world));
    for (int r = 0; r < state->world; ++r) everyone[static_cast<size_t>(r)] = r;
    state->membership->arrive_and_wait("init", everyone,
                                       "the meeting of " + std::to_string(state->world) + " ranks at " + where);
  }
  DIFFUSE_LOG_DEBUG("rank {} of {} (local {}), device {}, backend {}", state->rank, state->world, state->local_rank,
                    state->device.str(), state->backend);
  return Distributed(std::move(state));
}

Distributed::Distributed(std::unique_ptr<State> state) : state_(std::move(state)) {}
Distributed::Distributed(Distributed&&) noexcept = default;
Distributed& Distributed::operator=(Distributed&& other) noexcept {
  if (this != &other) {
    Distributed old(std::move(*this));  // ends this one properly
    state_ = std::move(other.state_);
  }
  return *this;
}

Distributed::~Distributed() {
  if (!state_) return;
  try {
    // Say goodbye first: the others, seeing this rank's connections close, then know why.
    state_->membership->leave();
    state_->world_communicator.reset();
    // The others may still need the store (its host's exit would close it under them).
    if (state_->hosts_store) state_->membership->wait_for_others_to_leave();
  } catch (const std::exception& e) {
    DIFFUSE_LOG_WARN("leaving the process group: {}", e.what());
  }
}

int Distributed::rank() const { return state_->rank; }
int Distributed::world_size() const { return state_->world; }
int Distributed::local_rank() const { return state_->local_rank; }
int Distributed::local_world_size() const { return state_->local_world; }
c10::Device Distributed::device() const { return state_->device; }
std::chrono::milliseconds Distributed::timeout() const { return state_->timeout; }

void Distributed::barrier() {
  const uint64_t n = state_->barriers++;
  std::vector<int> everyone(static_cast<size_t>(state_->world));
  for (int r = 0; r < state_->world; ++r) everyone[static_cast<size_t>(r)] = r;
  state_->membership->arrive_and_wait("barrier/" + std::to_string(n), everyone,
                                      "Distributed::barrier #" + std::to_string(n + 1));
}

Communicator& Distributed::communicator() {
  if (!state_->world_communicator) {
    GroupSpec spec;
    spec.membership = state_->membership;
    spec.name = "world";
    spec.rank = state_->rank;
    for (int r = 0; r < state_->world; ++r) spec.global_ranks.push_back(r);
    spec.device = state_->device;
    spec.master_addr = state_->master_addr;
#if DIFFUSE_HAS_NCCL
    if (state_->backend == "nccl") state_->world_communicator = distributed_detail::make_nccl_communicator(spec);
#endif
    if (!state_->world_communicator) state_->world_communicator = distributed_detail::make_gloo_communicator(spec);
  }
  return *state_->world_communicator;
}

std::shared_ptr<Communicator> Distributed::shared_communicator() {
  communicator();
  return state_->world_communicator;
}

std::vector<std::string> Distributed::gather_to_main(const std::vector<std::string>& items) {
  // Small data: through the store, so it needs no communicator.
  const std::string key = "gather/" + std::to_string(state_->gathers++) + "/";
  std::string encoded;
  for (const std::string& item : items) encoded += std::to_string(item.size()) + ":" + item;
  state_->membership->set(key + std::to_string(state_->rank), encoded);
  if (state_->rank != 0) return {};
  std::vector<std::string> out;
  for (int r = 0; r < state_->world; ++r) {
    const std::string value = r == 0 ? encoded
                                     : state_->membership->wait_for_key(key + std::to_string(r), r,
                                                                        "gather_to_main of strings");
    for (size_t at = 0; at < value.size();) {
      const size_t colon = value.find(':', at);
      const size_t length = std::stoull(value.substr(at, colon - at));
      out.push_back(value.substr(colon + 1, length));
      at = colon + 1 + length;
    }
  }
  return out;
}

at::Tensor Distributed::gather_to_main(const at::Tensor& tensor) {
  Communicator& comm = communicator();
  const at::Tensor x = (tensor.dim() == 0 ? tensor.reshape({1}) : tensor).to(comm.device()).contiguous();
  constexpr int64_t kMaxDims = 8;
  if (x.dim() > kMaxDims) throw Error("gather_to_main: tensors of more than 8 dims are not supported");
  // Everyone's shape and dtype first: dim 0 may differ, the rest must not.
  at::Tensor meta = at::full({kMaxDims + 2}, -1, at::kLong);
  meta[0] = x.dim();
  meta[1] = static_cast<int64_t>(x.scalar_type());
  for (int64_t d = 0; d < x.dim(); ++d) meta[d + 2] = x.size(d);
  const at::Tensor metas = comm.all_gather(meta.to(comm.device())).cpu().view({comm.size(), kMaxDims + 2});
  std::vector<int64_t> sizes;
  for (int r = 0; r < comm.size(); ++r) {
    const at::Tensor theirs = metas[r];
    if (theirs[0].item<int64_t>() != x.dim() || theirs[1].item<int64_t>() != meta[1].item<int64_t>() ||
        !theirs.slice(0, 3).equal(meta.slice(0, 3))) {
      std::string shape;
      for (int64_t d = 0; d < theirs[0].item<int64_t>(); ++d) shape += (d ? ", " : "") + std::to_string(theirs[d + 2].item<int64_t>());
      throw Error("gather_to_main: rank " + std::to_string(r) + "'s tensor [" + shape + "] (" +
                  c10::toString(static_cast<c10::ScalarType>(theirs[1].item<int64_t>())) +
                  ") does not match this rank's " + c10::toString(x.scalar_type()) +
                  " tensor beyond dim 0");
    }
    sizes.push_back(theirs[2].item<int64_t>());
  }
  at::Tensor gathered = comm.all_gather(x, 0, sizes);
  return state_->rank == 0 ? gathered : at::Tensor();
}

}  // namespace diffuse
