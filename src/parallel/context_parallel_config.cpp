#include "diffuse/parallel/context_parallel_config.hpp"

#include "diffuse/error.hpp"

namespace diffuse {

std::string ContextParallelConfig::describe() const {
  if (ring_degree > 1 && ulysses_degree > 1)
    return "unified " + std::to_string(ring_degree) + "x" + std::to_string(ulysses_degree) + " (ring x ulysses)";
  if (ring_degree > 1) return "ring " + std::to_string(ring_degree);
  if (ulysses_degree > 1) return "ulysses " + std::to_string(ulysses_degree);
  return "none";
}

void ContextParallelConfig::validate(int64_t world_size, int64_t num_heads) const {
  if (ring_degree < 1 || ulysses_degree < 1)
    throw Error("context parallel: ring_degree and ulysses_degree must be at least 1 (got " +
                std::to_string(ring_degree) + " and " + std::to_string(ulysses_degree) + ")");
  if (ring_degree == 1 && ulysses_degree == 1)
    throw Error("context parallel: set ring_degree or ulysses_degree above 1 (both are 1)");
  if (degree() > world_size)
    throw Error("context parallel: ring_degree x ulysses_degree = " + std::to_string(degree()) +
                " is more than the world size " + std::to_string(world_size));
  if (num_heads % ulysses_degree != 0)
    throw Error("context parallel: ulysses_degree " + std::to_string(ulysses_degree) + " does not divide the " +
                std::to_string(num_heads) + " attention heads");
}

}  // namespace diffuse
