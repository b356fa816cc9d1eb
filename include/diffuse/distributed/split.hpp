#pragma once
// Splitting work between processes the way Accelerate's `split_between_processes` does: each rank
// gets one contiguous slice, the slices as even as possible (the first `n % world` ranks get one
// more), in rank order. With padding, a short slice repeats its last item until every rank has the
// same count, so that collectives over the results line up.

#include <cstdint>
#include <vector>

namespace diffuse {

// [begin, end) of rank `rank`'s slice of n items. Throws diffuse::Error for a bad rank or world.
struct ProcessShare {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};
ProcessShare process_share(int64_t n, int rank, int world_size);

// The indices (into the n items) that rank `rank` handles; with padding, the last one repeated up to
// ceil(n / world_size) entries. A rank whose slice is empty (n < world_size) pads with the last item
// of all (Accelerate raises there); with n == 0 every rank gets nothing.
std::vector<int64_t> process_indices(int64_t n, int rank, int world_size, bool apply_padding = false);

template <class T>
std::vector<T> split_between_processes(const std::vector<T>& items, int rank, int world_size,
                                       bool apply_padding = false) {
  std::vector<T> out;
  for (int64_t index : process_indices(static_cast<int64_t>(items.size()), rank, world_size, apply_padding))
    out.push_back(items[static_cast<size_t>(index)]);
  return out;
}

}  // namespace diffuse
