#pragma once
// Context parallelism for one attention call: each rank holds a contiguous shard of the sequence (q, k
// and v rows of its own tokens) and gets back exactly what full attention would give those rows.
//
// The mesh is 2D, ring x Ulysses: mesh rank = ring_index * ulysses_degree + ulysses_index, so a Ulysses
// group is `ulysses_degree` consecutive ranks and a ring group the ranks with the same ulysses_index.
//   Ulysses: ONE all-to-all of q, k and v stacked (heads scattered, sequence gathered, uneven shards
//            allowed), attention over all tokens for heads/ulysses_degree heads, one all-to-all back.
//   Ring:    K/V blocks rotate by send_recv; each step's transfer is started before the attention to
//            the block already held, and the partial outputs merge by log-sum-exp (float32 when
//            convert_to_fp32).
//   Unified: Ulysses inside the Ulysses group, then ring across the ring group on the head subset.
// Attention needs no mask, so the order of tokens over ranks does not matter: any shard layout works
// as long as each rank's rotary rows follow its own tokens (and a key padding mask its own keys).

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "diffuse/distributed/communicator.hpp"
#include "diffuse/models/attention_backend.hpp"
#include "diffuse/models/key_padding.hpp"
#include "diffuse/parallel/context_parallel_config.hpp"

namespace diffuse {

class ContextParallelMesh {
 public:
  // Collective over `world` (every member calls it): splits it into the mesh's sub-communicators.
  // Members with world rank >= config.degree() take no part (active() is false; they compute alone).
  // Throws diffuse::Error for degrees that do not fit the world (see ContextParallelConfig::validate;
  // pass num_heads to check the Ulysses degree against them, 0 to skip that check).
  ContextParallelMesh(std::shared_ptr<Communicator> world, const ContextParallelConfig& config,
                      int64_t num_heads = 0);

  const ContextParallelConfig& config() const { return config_; }
  bool active() const { return group_ != nullptr; }
  // This rank's place in the mesh (0 .. degree - 1), and its two coordinates.
  int64_t rank() const { return rank_; }
  int64_t ring_index() const { return rank_ / config_.ulysses_degree; }
  int64_t ulysses_index() const { return rank_ % config_.ulysses_degree; }
  int64_t degree() const { return config_.degree(); }
  // All mesh members (rank order = mesh rank), its Ulysses row and its ring column (null off-mesh).
  Communicator& group() const;
  const std::shared_ptr<Communicator>& ulysses_group() const { return ulysses_; }
  const std::shared_ptr<Communicator>& ring_group() const { return ring_; }
  const std::shared_ptr<Communicator>& world() const { return world_; }

 private:
  std::shared_ptr<Communicator> world_, group_, ulysses_, ring_;
  ContextParallelConfig config_;
  int64_t rank_ = -1;
};

struct ContextParallelAttentionOptions {
  // The kernel for each local attention (ring steps need its log-sum-exp; see attention_backend.hpp).
  AttentionBackend backend = AttentionBackend::automatic;
  // Every mesh member's local sequence length, in mesh-rank order, when the caller knows them (the
  // transformer does: they follow from shard_sizes). Empty: exchanged by one all-gather per call, which
  // also waits for the GPU; knowing them keeps the call free of host synchronization.
  std::vector<int64_t> lengths;
  // Keys that are padding (Qwen-Image's padded text), over the keys of every mesh member in mesh-rank
  // order: [batch, sum of the members' lengths]. Each K/V block is attended to with its own rows of it
  // (Ulysses: its row of the mesh; ring: the block's owner). Empty: every key counts.
  KeyPadding key_padding;
};

// q, k, v: [batch, heads, local_seq, head_dim], this rank's tokens (local_seq may differ between
// ranks). Returns [batch, heads, local_seq, head_dim] in q's dtype: softmax(q k^T * scale) v over the
// keys of every rank of the mesh. Collective over the mesh. On an inactive mesh: plain attention.
at::Tensor context_parallel_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const ContextParallelMesh& mesh, double scale,
                                      const ContextParallelAttentionOptions& options = {});

}  // namespace diffuse
