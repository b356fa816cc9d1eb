#include "diffuse/parallel/parallel_mesh.hpp"

#include "diffuse/error.hpp"

namespace diffuse {

ParallelMesh::ParallelMesh(std::shared_ptr<Communicator> world, const ParallelConfig& config)
    : world_(std::move(world)), config_(config) {
  if (!world_) throw Error("ParallelMesh: no world communicator");
  config_.validate(world_->size());
  const int world_rank = world_->rank();
  const bool member = world_rank < config_.degree();
  const int C = static_cast<int>(config_.context_degree());
  if (member) cfg_index_ = world_rank / C;
  // Two collective splits, in the same order on every member of the world (non-members pass -1).
  context_ = world_->split(member ? static_cast<int>(cfg_index_) : -1, world_rank);
  std::shared_ptr<Communicator> partners =
      world_->split(member && config_.cfg_degree > 1 ? world_rank % C : -1, static_cast<int>(cfg_index_));
  if (member && config_.cfg_degree > 1) cfg_ = std::move(partners);
}

}  // namespace diffuse
