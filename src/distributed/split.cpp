#include "diffuse/distributed/split.hpp"

#include <algorithm>
#include <string>

#include "diffuse/error.hpp"

namespace diffuse {

ProcessShare process_share(int64_t n, int rank, int world_size) {
  if (world_size < 1) throw Error("split between processes: world size " + std::to_string(world_size) + " < 1");
  if (rank < 0 || rank >= world_size)
    throw Error("split between processes: rank " + std::to_string(rank) + " outside [0, " +
                std::to_string(world_size) + ")");
  if (n < 0) throw Error("split between processes: negative item count " + std::to_string(n));
  // Accelerate: divmod(n, world); the first `extras` ranks take one more.
  const int64_t per_rank = n / world_size;
  const int64_t extras = n % world_size;
  ProcessShare share;
  share.begin = rank * per_rank + std::min<int64_t>(rank, extras);
  share.end = share.begin + per_rank + (rank < extras ? 1 : 0);
  return share;
}

std::vector<int64_t> process_indices(int64_t n, int rank, int world_size, bool apply_padding) {
  const ProcessShare share = process_share(n, rank, world_size);
  std::vector<int64_t> indices;
  for (int64_t i = share.begin; i < share.end; ++i) indices.push_back(i);
  if (apply_padding && n > 0) {
    const int64_t longest = n / world_size + (n % world_size > 0 ? 1 : 0);
    const int64_t last = indices.empty() ? n - 1 : indices.back();
    while (static_cast<int64_t>(indices.size()) < longest) indices.push_back(last);
  }
  return indices;
}

}  // namespace diffuse
