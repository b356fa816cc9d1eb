#include "diffuse/parallel/sequence_shards.hpp"

#include "diffuse/error.hpp"

namespace diffuse {

std::vector<int64_t> shard_sizes(int64_t length, int64_t parts) {
  if (parts < 1) throw Error("shard_sizes: parts must be at least 1, got " + std::to_string(parts));
  if (length < 0) throw Error("shard_sizes: length must not be negative, got " + std::to_string(length));
  std::vector<int64_t> sizes(static_cast<size_t>(parts), length / parts);
  for (int64_t i = 0; i < length % parts; ++i) sizes[static_cast<size_t>(i)] += 1;
  return sizes;
}

int64_t shard_offset(int64_t length, int64_t parts, int64_t index) {
  if (index < 0 || index >= parts)
    throw Error("shard_offset: index " + std::to_string(index) + " outside [0, " + std::to_string(parts) + ")");
  return index * (length / parts) + std::min(index, length % parts);
}

at::Tensor take_shard(const at::Tensor& tensor, int64_t dim, int64_t parts, int64_t index) {
  const int64_t length = tensor.size(dim);
  const int64_t begin = shard_offset(length, parts, index);
  return tensor.narrow(dim, begin, shard_sizes(length, parts)[static_cast<size_t>(index)]);
}

}  // namespace diffuse
