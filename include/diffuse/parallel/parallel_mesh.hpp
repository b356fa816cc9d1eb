#pragma once
// The 3D mesh of a ParallelConfig over a world: cfg x ring x Ulysses, cfg outermost. World rank r
// (r < degree) sits at cfg_index = r / context_degree and context rank r % context_degree:
//
//   cfg 2 x ulysses 2 over 4 ranks:   cfg half 0 (unconditional) = ranks 0 1, Ulysses group of 2
//                                     cfg half 1 (conditional)   = ranks 2 3, Ulysses group of 2
//                                     cfg pairs (partners)       = {0, 2} and {1, 3}
//
// context_group() is this rank's half: a whole ring x Ulysses mesh, over which the family's
// transformer splits its tokens (ContextParallelMesh). cfg_group() holds the partners, the ranks at the
// same place in the other halves (cfg index order): one all-gather over it gives both ranks both
// predictions of a guided step (pipelines/guidance.hpp). Ranks at or past `degree` take no part:
// active() is false and they compute alone.

#include <memory>

#include "diffuse/distributed/communicator.hpp"
#include "diffuse/parallel/parallel_config.hpp"

namespace diffuse {

class ParallelMesh {
 public:
  // Collective over `world` (every member calls it with the same config): two splits. The config is
  // validated against the world size first (ParallelConfig::validate), before anything collective.
  ParallelMesh(std::shared_ptr<Communicator> world, const ParallelConfig& config);

  const ParallelConfig& config() const { return config_; }
  const std::shared_ptr<Communicator>& world() const { return world_; }
  bool active() const { return context_ != nullptr; }
  // 0: the unconditional half, 1: the conditional half (0 when cfg_degree is 1 or off the mesh).
  int64_t cfg_index() const { return cfg_index_; }
  // This rank's cfg half (ring x Ulysses ranks, in world order); null off the mesh.
  const std::shared_ptr<Communicator>& context_group() const { return context_; }
  // The cfg partners (cfg_degree ranks, member i = cfg index i); null when cfg_degree is 1 or off the mesh.
  const std::shared_ptr<Communicator>& cfg_group() const { return cfg_; }

 private:
  std::shared_ptr<Communicator> world_, context_, cfg_;
  ParallelConfig config_;
  int64_t cfg_index_ = 0;
};

}  // namespace diffuse
