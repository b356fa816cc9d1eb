#include "diffuse/parallel/context_parallel.hpp"

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "diffuse/error.hpp"
#include "diffuse/parallel/partial_attention.hpp"

namespace diffuse {
namespace {

// Every member's local sequence length (shards may be uneven), in member order.
std::vector<int64_t> exchange_lengths(Communicator& comm, int64_t local) {
  at::Tensor all = comm.all_gather(at::full({1}, local, at::TensorOptions(at::kLong).device(comm.device())), 0);
  all = all.cpu();
  return {all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + all.numel()};
}

// Ring attention over `ring`: the K/V block held rotates one member forward per step; the transfer
// of the next block is in flight while this rank attends to the current one. `lengths`: each ring
// member's block length; `paddings`: each member's block's key padding (empty: none).
at::Tensor ring_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, Communicator& ring,
                          double scale, const std::vector<int64_t>& lengths, AttentionBackend backend,
                          bool float32_merge, const std::vector<KeyPadding>& paddings) {
  const int P = ring.size(), r = ring.rank();
  at::Tensor current = at::stack({k, v}, 0);  // [2, batch, heads, seq, head_dim], contiguous
  PartialAttention total;
  for (int step = 0; step < P; ++step) {
    at::Tensor next;
    Work transfer;
    if (step + 1 < P) {
      // After this step we hold the block of member (r - step - 1) mod P.
      const int64_t source = ((r - step - 1) % P + P) % P;
      std::vector<int64_t> shape = current.sizes().vec();
      shape[3] = lengths[static_cast<size_t>(source)];
      next = at::empty(shape, current.options());
      transfer = ring.send_recv(current, (r + 1) % P, next, (r - 1 + P) % P);
    }
    // The block held now is member (r - step) mod P's.
    const KeyPadding padding = paddings.empty() ? KeyPadding() : paddings[static_cast<size_t>(((r - step) % P + P) % P)];
    merge_partial_attention(total, attention_with_lse(q, current[0], current[1], scale, backend, padding),
                            float32_merge);
    if (step + 1 < P) {
      transfer.wait();
      current = next;
    }
  }
  return total.out.to(q.scalar_type());
}

// After the Ulysses exchange (or without one): attention over the ring, or alone. `row_paddings`: the
// key padding of each mesh row's tokens (the ring members' blocks), or empty.
at::Tensor local_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const ContextParallelMesh& mesh,
                           double scale, const std::vector<int64_t>& ring_lengths, AttentionBackend backend,
                           const std::vector<KeyPadding>& row_paddings) {
  const auto& ring = mesh.ring_group();
  if (ring && ring->size() > 1) {
    const std::vector<int64_t> lengths = ring_lengths.empty() ? exchange_lengths(*ring, k.size(2)) : ring_lengths;
    return ring_attention(q, k, v, *ring, scale, lengths, backend, mesh.config().convert_to_fp32, row_paddings);
  }
  return attention(q, k, v, scale, backend,
                   row_paddings.empty() ? KeyPadding() : row_paddings[static_cast<size_t>(mesh.ring_index())]);
}

}  // namespace

ContextParallelMesh::ContextParallelMesh(std::shared_ptr<Communicator> world, const ContextParallelConfig& config,
                                         int64_t num_heads)
    : world_(std::move(world)), config_(config) {
  if (!world_) throw Error("ContextParallelMesh: no world communicator");
  config_.validate(world_->size(), num_heads > 0 ? num_heads : config_.ulysses_degree);
  const int world_rank = world_->rank();
  const bool member = world_rank < config_.degree();
  rank_ = member ? world_rank : -1;
  const int U = static_cast<int>(config_.ulysses_degree);
  // Three collective splits, in the same order on every member of the world.
  group_ = world_->split(member ? 0 : -1, world_rank);
  ulysses_ = world_->split(member ? world_rank / U : -1, world_rank % U);
  ring_ = world_->split(member ? world_rank % U : -1, world_rank / U);
}

Communicator& ContextParallelMesh::group() const {
  if (!group_) throw Error("ContextParallelMesh: world rank " + std::to_string(world_->rank()) + " is not in the mesh");
  return *group_;
}

at::Tensor context_parallel_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const ContextParallelMesh& mesh, double scale,
                                      const ContextParallelAttentionOptions& options) {
  if (q.dim() != 4 || k.sizes() != v.sizes() || q.size(2) != k.size(2))
    throw Error("context_parallel_attention: q, k, v must be [batch, heads, seq, head_dim] with one length");
  if (!mesh.active()) return attention(q, k, v, scale, options.backend, options.key_padding);
  const int64_t U = mesh.config().ulysses_degree, R = mesh.config().ring_degree;
  const bool padded = options.key_padding.any();
  // A key padding is cut by the members' lengths, so they are needed then.
  const std::vector<int64_t> lengths =
      options.lengths.empty() && padded ? exchange_lengths(mesh.group(), q.size(2)) : options.lengths;
  if (!lengths.empty()) {
    if (static_cast<int64_t>(lengths.size()) != mesh.degree() || lengths[static_cast<size_t>(mesh.rank())] != q.size(2))
      throw Error("context_parallel_attention: " + std::to_string(lengths.size()) +
                  " lengths given for a mesh of " + std::to_string(mesh.degree()) + ", or this rank's (" +
                  std::to_string(q.size(2)) + " tokens) is not among them at its place");
  }
  // Ring member i holds, after the Ulysses exchange, the tokens of Ulysses row i.
  std::vector<int64_t> ring_lengths;
  if (!lengths.empty())
    for (int64_t i = 0; i < R; ++i) {
      int64_t row = 0;
      for (int64_t j = 0; j < U; ++j) row += lengths[static_cast<size_t>(i * U + j)];
      ring_lengths.push_back(row);
    }
  // And the keys of row i are the padding's columns from the rows before it on.
  std::vector<KeyPadding> row_paddings;
  if (padded) {
    int64_t total = 0;
    for (int64_t row : ring_lengths) total += row;
    if (options.key_padding.keys() != total || options.key_padding.batch() != q.size(0))
      throw Error("context_parallel_attention: the key padding is [" + std::to_string(options.key_padding.batch()) +
                  ", " + std::to_string(options.key_padding.keys()) + "] for a batch of " + std::to_string(q.size(0)) +
                  " over the mesh's " + std::to_string(total) + " keys");
    int64_t offset = 0;
    for (int64_t row : ring_lengths) {
      row_paddings.push_back(options.key_padding.narrow(offset, row));
      offset += row;
    }
  }
  if (U == 1) return local_attention(q, k, v, mesh, scale, ring_lengths, options.backend, row_paddings);

  const auto& ulysses = mesh.ulysses_group();
  const int64_t heads = q.size(1);
  if (heads % U != 0)
    throw Error("context_parallel_attention: ulysses degree " + std::to_string(U) + " does not divide the " +
                std::to_string(heads) + " heads");
  const std::vector<int64_t> row_lengths =
      lengths.empty() ? exchange_lengths(*ulysses, q.size(2))
                      : std::vector<int64_t>(lengths.begin() + mesh.ring_index() * U,
                                             lengths.begin() + (mesh.ring_index() + 1) * U);
  const std::vector<int64_t> head_shares(static_cast<size_t>(U), heads / U);
  // One exchange for q, k and v: [3, batch, heads, seq, d] -> [3, batch, heads / U, all seq, d].
  at::Tensor qkv = at::stack({q, k, v}, 0);
  qkv = ulysses->all_to_all(qkv, /*scatter_dim=*/2, /*gather_dim=*/3, head_shares, row_lengths);
  at::Tensor out = local_attention(qkv[0], qkv[1], qkv[2], mesh, scale, ring_lengths, options.backend, row_paddings);
  // And back: sequence scattered to its owners, heads gathered.
  return ulysses->all_to_all(out.contiguous(), /*scatter_dim=*/2, /*gather_dim=*/1, row_lengths, head_shares);
}

}  // namespace diffuse
