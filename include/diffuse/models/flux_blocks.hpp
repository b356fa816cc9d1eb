#pragma once
// The blocks of FLUX.1's transformer (diffusers' transformer_flux.py): joint attention over text and
// image tokens, the dual-stream block (separate weights per stream, one attention) and the
// single-stream block (one set of weights over the concatenated sequence, attention and MLP in parallel).
//
// Sequence convention: attention sees [text tokens, image tokens] in that order, and the rotary
// embedding has one row per token of that same sequence. Blocks never look past the tokens they are
// given, so a context-parallel caller can hand each rank its own shard of text, image and rotary rows.

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <vector>

#include "diffuse/models/attention_backend.hpp"
#include "diffuse/models/embeddings.hpp"
#include "diffuse/models/feed_forward.hpp"
#include "diffuse/models/key_padding.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/normalization.hpp"

namespace diffuse {

class ContextParallelMesh;  // diffuse/parallel/context_parallel.hpp

// How a model's attention runs. One object is shared by every FluxAttention of a transformer, which
// sets it: the kernel, and under context parallelism the mesh and the sequence lengths of this call.
struct AttentionSettings {
  AttentionBackend backend = AttentionBackend::automatic;
  // Null: attention over the tokens given. Else context_parallel_attention over this mesh.
  std::shared_ptr<const ContextParallelMesh> mesh;
  // Each mesh member's joint [text, image] shard length in the current call (the transformer knows
  // them, so no rank has to ask the others).
  std::vector<int64_t> mesh_lengths;
  // Keys left out of the current call's attention (Qwen-Image's padded text); with a mesh, over every
  // mesh member's keys in mesh-rank order (context_parallel.hpp). Empty for FLUX.
  KeyPadding key_padding;
};

// Both streams' attention outputs; encoder_hidden_states is undefined for the single-stream form.
struct FluxAttentionOutput {
  at::Tensor hidden_states;          // image tokens (dual) or the whole sequence (single)
  at::Tensor encoder_hidden_states;  // text tokens (dual only)
};

// diffusers' FluxAttention with FluxAttnProcessor. The dual-stream form (`added_kv`) projects text
// tokens with their own add_{q,k,v}_proj / norm_added_{q,k} and projects outputs back with to_out.0
// (image) and to_add_out (text); the single-stream form is "pre_only": no output projection.
// Queries and keys get RMSNorm per head (eps 1e-6), then the rotary embedding.
class FluxAttentionImpl : public torch::nn::Module {
 public:
  FluxAttentionImpl(int64_t dim, int64_t heads, int64_t head_dim, bool added_kv, const at::TensorOptions& options);

  // hidden_states [batch, seq, dim]; encoder_hidden_states [batch, text_seq, dim] (dual form only) is
  // placed before them; `rotary` has one row per token of [text, image].
  FluxAttentionOutput forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                              const RotaryEmbedding& rotary);

  // The attention proper, q/k/v [batch, heads, seq, head_dim] -> [batch, heads, seq, head_dim]. Every
  // FLUX attention goes through here and nothing else in the blocks assumes it sees the whole
  // sequence, so that context parallelism replaces only this call.
  at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

  // diffusers' fuse_qkv_projections, without a second copy of the weights: re-lays to_q, to_k and
  // to_v's weights and biases end to end in one storage (likewise add_q/k/v_proj) and points the
  // parameters at views of it, so that forward projects each stream with one GEMM of 3 * inner
  // outputs instead of three. Names, state dicts and values are unchanged. Anything that later
  // replaces a parameter's data (loading, offload, a device map) undoes it, and forward falls back to
  // three products, with the same results. Returns whether every group is now fused.
  bool fuse_qkv_projections();
  // Whether forward currently runs each stream's q/k/v as one product.
  bool qkv_projections_fused() const;

  int64_t heads, head_dim;
  // The transformer replaces this with the one object all its attentions share.
  std::shared_ptr<AttentionSettings> settings = std::make_shared<AttentionSettings>();
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  RMSNorm norm_q{nullptr}, norm_k{nullptr};
  // Dual-stream form only (empty otherwise):
  Linear add_q_proj{nullptr}, add_k_proj{nullptr}, add_v_proj{nullptr};
  RMSNorm norm_added_q{nullptr}, norm_added_k{nullptr};
  torch::nn::ModuleList to_out{nullptr};  // [Linear, dropout placeholder]
  Linear to_add_out{nullptr};

 private:
  // [batch, seq, heads * head_dim] -> RMSNorm per head -> [batch, heads, seq, head_dim].
  at::Tensor split_heads(const at::Tensor& x, RMSNorm& norm) const;
  // {q, k, v} [batch, seq, heads * head_dim] of x: one product over the joint weight when the three
  // layers are fused (then column slices of its output), else three.
  std::vector<at::Tensor> project_qkv(const at::Tensor& x, Linear& q, Linear& k, Linear& v);
  // forward through the fused CUDA kernel for norm and rotary (src/models/qk_norm_rope.hpp).
  FluxAttentionOutput forward_fused(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                                    const RotaryEmbedding& rotary);
};
TORCH_MODULE(FluxAttention);

// fuse_qkv_projections / qkv_projections_fused over every FluxAttention inside `model` (the FLUX and
// Qwen-Image transformers' blocks): whether every one is now fused / is fused.
bool fuse_qkv_projections_in(torch::nn::Module& model);
bool qkv_projections_fused_in(const torch::nn::Module& model);

// What a FLUX block returns: both streams, text first as diffusers returns them.
struct FluxBlockOutput {
  at::Tensor encoder_hidden_states;  // [batch, text_seq, dim]
  at::Tensor hidden_states;          // [batch, image_seq, dim]
};

// diffusers' FluxTransformerBlock (MM-DiT): each stream has its own adaLN-Zero modulation, attention
// projections and MLP; the two streams meet only inside the joint attention.
class FluxTransformerBlockImpl : public torch::nn::Module {
 public:
  FluxTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, const at::TensorOptions& options);
  FluxBlockOutput forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                          const at::Tensor& temb, const RotaryEmbedding& rotary);
  AdaLayerNormZero norm1{nullptr}, norm1_context{nullptr};
  FluxAttention attn{nullptr};
  LayerNorm norm2{nullptr}, norm2_context{nullptr};  // eps 1e-6, no parameters
  FeedForward ff{nullptr}, ff_context{nullptr};
};
TORCH_MODULE(FluxTransformerBlock);

// diffusers' FluxSingleTransformerBlock: text and image tokens concatenated, one modulation, attention
// and a tanh-GELU MLP side by side, projected back together by proj_out.
class FluxSingleTransformerBlockImpl : public torch::nn::Module {
 public:
  FluxSingleTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, const at::TensorOptions& options,
                                 double mlp_ratio = 4.0);
  FluxBlockOutput forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                          const at::Tensor& temb, const RotaryEmbedding& rotary);
  AdaLayerNormZeroSingle norm{nullptr};
  Linear proj_mlp{nullptr}, proj_out{nullptr};
  FluxAttention attn{nullptr};
};
TORCH_MODULE(FluxSingleTransformerBlock);

// float16 overflows past 65504 on FLUX's residual stream; diffusers clips there, so do we (no-op otherwise).
at::Tensor clip_float16(const at::Tensor& x);

}  // namespace diffuse
