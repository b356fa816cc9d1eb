#pragma once
// How a sequence of any length splits into contiguous shards over ranks: as even as possible, the
// first (length % parts) shards one token longer (15 tokens over 4 ranks: 4, 4, 4, 3).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace diffuse {

// The length of each of `parts` shards of `length` tokens.
std::vector<int64_t> shard_sizes(int64_t length, int64_t parts);
// Where shard `index` starts.
int64_t shard_offset(int64_t length, int64_t parts, int64_t index);
// Shard `index` of `tensor` along `dim` (a view).
at::Tensor take_shard(const at::Tensor& tensor, int64_t dim, int64_t parts, int64_t index);

}  // namespace diffuse
