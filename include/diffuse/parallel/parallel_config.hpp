#pragma once
// How one image's denoising is spread over ranks (diffusers' ParallelConfig, with the CFG dimension it
// leaves as a to-do): `cfg_degree` 2 puts the unconditional and the conditional pass of classifier-free
// guidance on two halves of the ranks, and inside each half the transformer's tokens may be split by
// context parallelism (ring x Ulysses, ContextParallelConfig). The mesh is 3D, cfg outermost:
//
//   world rank = cfg_index * (ring_degree * ulysses_degree) + context rank
//
// so each cfg half is a whole ring x Ulysses mesh of consecutive ranks (parallel/parallel_mesh.hpp).
// docs/context_parallel.md says which degrees to choose.
//
//   PipelineOptions options{.parallel_config = ParallelConfig{.cfg_degree = 2, .ulysses_degree = 2},
//                           .parallel_world = dist.shared_communicator()};   // 4 ranks
//
// A ContextParallelConfig converts to a ParallelConfig with cfg_degree 1, so code written before the
// cfg dimension keeps working.

#include <cstdint>
#include <string>

#include "diffuse/parallel/context_parallel_config.hpp"

namespace diffuse {

struct ParallelConfig {
  // 1 or 2: with 2, cfg index 0 runs the unconditional pass and cfg index 1 the conditional one.
  int64_t cfg_degree = 1;
  int64_t ring_degree = 1;
  int64_t ulysses_degree = 1;
  // Merge ring partial outputs in float32 (as diffusers' convert_to_fp32).
  bool convert_to_fp32 = true;

  // Ranks of the whole mesh, and of one cfg half (the context-parallel part).
  int64_t degree() const { return cfg_degree * context_degree(); }
  int64_t context_degree() const { return ring_degree * ulysses_degree; }
  bool splits_context() const { return context_degree() > 1; }
  // The context-parallel part, for the transformer of one cfg half.
  ContextParallelConfig context() const {
    return {.ring_degree = ring_degree, .ulysses_degree = ulysses_degree, .convert_to_fp32 = convert_to_fp32};
  }
  // "cfg 2", "ulysses 4", "cfg 2 x ring 2", "cfg 2 x unified 2x2 (ring x ulysses)".
  std::string describe() const;
  // cfg_degree 1 or 2, the other degrees at least 1, at least one degree above 1, and
  // cfg x ring x ulysses at most the world size. Throws diffuse::Error naming the degree and the world
  // size. (Whether Ulysses divides the heads is checked by the transformer.)
  void validate(int64_t world_size) const;
};

}  // namespace diffuse
