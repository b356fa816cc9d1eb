#include "diffuse/parallel/parallel_config.hpp"

#include "diffuse/error.hpp"

namespace diffuse {

ContextParallelConfig::operator ParallelConfig() const {
  return {.cfg_degree = 1, .ring_degree = ring_degree, .ulysses_degree = ulysses_degree,
          .convert_to_fp32 = convert_to_fp32};
}

std::string ParallelConfig::describe() const {
  const std::string context = splits_context() ? this->context().describe() : "";
  if (cfg_degree == 1) return context.empty() ? "none" : context;
  return "cfg " + std::to_string(cfg_degree) + (context.empty() ? "" : " x " + context);
}

void ParallelConfig::validate(int64_t world_size) const {
  if (cfg_degree != 1 && cfg_degree != 2)
    throw Error("parallel config: cfg_degree must be 1 or 2 (the unconditional and the conditional pass), got " +
                std::to_string(cfg_degree));
  if (ring_degree < 1 || ulysses_degree < 1)
    throw Error("parallel config: ring_degree and ulysses_degree must be at least 1 (got " +
                std::to_string(ring_degree) + " and " + std::to_string(ulysses_degree) + ")");
  if (degree() == 1)
    throw Error("parallel config: set cfg_degree, ring_degree or ulysses_degree above 1 (all are 1)");
  if (degree() > world_size)
    throw Error("parallel config: cfg_degree x ring_degree x ulysses_degree = " + std::to_string(cfg_degree) + " x " +
                std::to_string(ring_degree) + " x " + std::to_string(ulysses_degree) + " = " +
                std::to_string(degree()) + " is more than the world size " + std::to_string(world_size));
}

}  // namespace diffuse
