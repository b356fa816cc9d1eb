#pragma once
// How one image's sequence is split over GPUs (diffusers' ContextParallelConfig): Ulysses over
// `ulysses_degree` ranks (all-to-all heads <-> sequence), ring over `ring_degree` ranks (K/V blocks
// rotate, partial outputs merge by log-sum-exp), or both on a 2D mesh (unified: Ulysses inside, ring
// across).

#include <cstdint>
#include <string>

namespace diffuse {

struct ParallelConfig;  // diffuse/parallel/parallel_config.hpp: this with a cfg dimension

struct ContextParallelConfig {
  int64_t ring_degree = 1;
  int64_t ulysses_degree = 1;
  // Merge ring partial outputs in float32 (as diffusers' convert_to_fp32).
  bool convert_to_fp32 = true;

  int64_t degree() const { return ring_degree * ulysses_degree; }
  // "ulysses 4", "ring 2", "unified 2x2 (ring x ulysses)".
  std::string describe() const;
  // diffusers' checks: both degrees at least 1, at least one above 1, their product at most the world
  // size, and the Ulysses degree dividing the head count. Throws diffuse::Error saying which.
  void validate(int64_t world_size, int64_t num_heads) const;
  // The same split as a ParallelConfig (cfg_degree 1), for PipelineOptions::parallel_config and
  // DiffusionPipeline::enable_parallelism.
  operator ParallelConfig() const;
};

}  // namespace diffuse
