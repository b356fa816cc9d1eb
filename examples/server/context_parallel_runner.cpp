#include "server/context_parallel_runner.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstring>

#include "diffuse/error.hpp"
#include <iostream>

namespace diffuse::server {
namespace {

// Rank 0's message to the others: {"type": "job", "params": {...}} | {"type": "ping"} | {"type": "stop"},
// as its length, then its bytes (the others learn the length first to receive the bytes).
nlohmann::json exchange(Communicator& world, const nlohmann::json& message) {
  const auto on_device = at::TensorOptions().device(world.device());
  const bool root = world.rank() == 0;
  const std::string text = root ? message.dump() : std::string();
  at::Tensor length = at::full({1}, static_cast<int64_t>(text.size()), on_device.dtype(at::kLong));
  length = world.broadcast(length, 0).cpu();
  const int64_t n = length.item<int64_t>();
  at::Tensor bytes = at::empty({n}, at::TensorOptions().dtype(at::kByte));
  if (root) std::memcpy(bytes.data_ptr(), text.data(), text.size());
  bytes = world.broadcast(bytes.to(world.device()), 0).cpu().contiguous();
  return nlohmann::json::parse(std::string(reinterpret_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(n)));
}

// Rank 0's decision to go on after a step, on every rank.
bool agree(Communicator& world, bool go_on) {
  at::Tensor flag = at::full({1}, go_on ? 1 : 0, at::TensorOptions().dtype(at::kInt).device(world.device()));
  return world.broadcast(flag, 0).cpu().item<int>() != 0;
}

}  // namespace

ContextParallelLeader::ContextParallelLeader(std::unique_ptr<PipelineRunner> local, std::shared_ptr<Communicator> world,
                                             std::string mode)
    : local_(std::move(local)), world_(std::move(world)), mode_(std::move(mode)) {}

JobOutput ContextParallelLeader::run(const GenerationParams& params, const StepProgress& progress) {
  exchange(*world_, {{"type", "job"}, {"params", params.to_json()}});
  return local_->run(params, [&](int64_t step, int64_t total) { return agree(*world_, progress(step, total)); });
}

void ContextParallelLeader::idle() { exchange(*world_, {{"type", "ping"}}); }

void ContextParallelLeader::stop() {
  if (stopped_) return;
  stopped_ = true;
  exchange(*world_, {{"type", "stop"}});
}

std::string ContextParallelLeader::describe() const {
  return local_->describe() + " (" + mode_ + " over " + std::to_string(world_->size()) + " ranks)";
}

void follow_jobs(PipelineRunner& local, Communicator& world) {
  for (;;) {
    const nlohmann::json message = exchange(world, nullptr);
    const std::string type = message.at("type").get<std::string>();
    if (type == "stop") return;
    if (type != "job") continue;
    const GenerationParams params = GenerationParams::from_json(message.at("params"));
    try {
      local.run(params, [&](int64_t, int64_t) { return agree(world, true); });
    } catch (const c10::Error& e) {
      std::cerr << "diffuse-server: rank " << world.rank() << ": job failed: " << e.what_without_backtrace() << "\n";
    } catch (const diffuse::Error& e) {
      std::cerr << "diffuse-server: rank " << world.rank() << ": job failed: " << e.what() << "\n";
    }
  }
}

}  // namespace diffuse::server
