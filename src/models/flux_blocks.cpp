#include "diffuse/models/flux_blocks.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "diffuse/error.hpp"
#include "diffuse/parallel/context_parallel.hpp"
#include "models/joint_linear.hpp"
#include "models/qk_norm_rope.hpp"

namespace diffuse {
namespace {

constexpr double kQkNormEps = 1e-6;
constexpr double kBlockNormEps = 1e-6;

// proj_out(cat(attention, mlp)) without building the concatenation (a [tokens, dim + mlp_dim] copy per
// block): proj_out's weight W [dim, dim + mlp_dim] splits by columns into W[:, :a] for the attention
// and W[:, a:] for the MLP, so the product is two GEMMs accumulating into one output. The column
// slices are strided views (row stride dim + mlp_dim), and at::addmm hands those to cuBLAS (and the
// CPU BLAS) in place: their transposes have strides (1, dim + mlp_dim), which prepare_matrix_for_cublas
// takes as a column-major operand with that leading dimension (no copy, in libtorch 1.13 and 2.x).
// In float32 this is the same sum split in two; in bfloat16 the first half is rounded once before the
// second is added (one more rounding than the single product, the size of a bias add's).
at::Tensor project_concatenation(const LinearImpl& proj_out, const at::Tensor& attention, const at::Tensor& mlp) {
  const at::Tensor& w = proj_out.weight;
  const int64_t a = attention.size(-1), m = mlp.size(-1);
  const at::Tensor attention_rows = attention.reshape({-1, a}), mlp_rows = mlp.reshape({-1, m});
  const at::Tensor w_attention = w.narrow(1, 0, a).t(), w_mlp = w.narrow(1, a, m).t();
  at::Tensor out = proj_out.bias.defined() ? at::addmm(proj_out.bias, attention_rows, w_attention)
                                           : at::mm(attention_rows, w_attention);
  out.addmm_(mlp_rows, w_mlp);
  std::vector<int64_t> shape = attention.sizes().vec();
  shape.back() = w.size(0);
  return out.view(shape);
}

// The joint [batch, text + image, dim] tensor that `text` and `image` are the two halves of, when
// they are (the single blocks hand each other x.narrow views of one output); undefined otherwise.
at::Tensor joint_sequence(const at::Tensor& text, const at::Tensor& image) {
  if (!text.defined() || !image.defined() || !text.has_storage() || !image.has_storage() || text.dim() != 3 ||
      image.dim() != 3 || text.scalar_type() != image.scalar_type() ||
      text.storage().unsafeGetStorageImpl() != image.storage().unsafeGetStorageImpl() ||
      text.size(0) != image.size(0) || text.size(2) != image.size(2) || text.strides() != image.strides() ||
      text.storage_offset() + text.size(1) * text.stride(1) != image.storage_offset())
    return at::Tensor();
  return text.as_strided({text.size(0), text.size(1) + image.size(1), text.size(2)}, text.strides(),
                         text.storage_offset());
}

}  // namespace

at::Tensor clip_float16(const at::Tensor& x) {
  return x.scalar_type() == at::kHalf ? x.clamp(-65504, 65504) : x;
}

FluxAttentionImpl::FluxAttentionImpl(int64_t dim, int64_t heads_, int64_t head_dim_, bool added_kv,
                                     const at::TensorOptions& options)
    : heads(heads_), head_dim(head_dim_) {
  const int64_t inner = heads * head_dim;
  to_q = register_module("to_q", Linear(dim, inner, /*bias=*/true, options));
  to_k = register_module("to_k", Linear(dim, inner, /*bias=*/true, options));
  to_v = register_module("to_v", Linear(dim, inner, /*bias=*/true, options));
  norm_q = register_module("norm_q", RMSNorm(head_dim, kQkNormEps, /*elementwise_affine=*/true, options));
  norm_k = register_module("norm_k", RMSNorm(head_dim, kQkNormEps, /*elementwise_affine=*/true, options));
  if (!added_kv) return;  // single-stream: pre_only, the block projects the output itself
  add_q_proj = register_module("add_q_proj", Linear(dim, inner, /*bias=*/true, options));
  add_k_proj = register_module("add_k_proj", Linear(dim, inner, /*bias=*/true, options));
  add_v_proj = register_module("add_v_proj", Linear(dim, inner, /*bias=*/true, options));
  norm_added_q = register_module("norm_added_q", RMSNorm(head_dim, kQkNormEps, true, options));
  norm_added_k = register_module("norm_added_k", RMSNorm(head_dim, kQkNormEps, true, options));
  to_out = torch::nn::ModuleList();
  to_out->push_back(Linear(inner, dim, /*bias=*/true, options));
  to_out->push_back(NoParameters());  // dropout
  register_module("to_out", to_out);
  to_add_out = register_module("to_add_out", Linear(inner, dim, /*bias=*/true, options));
}

at::Tensor FluxAttentionImpl::split_heads(const at::Tensor& x, RMSNorm& norm) const {
  // The head count named, not -1: a rank of a context-parallel mesh may hold no tokens of a stream.
  return norm(x.view({x.size(0), x.size(1), heads, head_dim})).transpose(1, 2);
}

std::vector<at::Tensor> FluxAttentionImpl::project_qkv(const at::Tensor& x, Linear& q, Linear& k, Linear& v) {
  return joint_linear_forward({q.get(), k.get(), v.get()}, x);
}

bool FluxAttentionImpl::fuse_qkv_projections() {
  bool fused = fuse_linears({to_q.get(), to_k.get(), to_v.get()});
  if (!add_q_proj.is_empty()) fused = fuse_linears({add_q_proj.get(), add_k_proj.get(), add_v_proj.get()}) && fused;
  return fused;
}

bool FluxAttentionImpl::qkv_projections_fused() const {
  bool fused = joint_linear({to_q.get(), to_k.get(), to_v.get()}).has_value();
  if (!add_q_proj.is_empty()) fused = fused && joint_linear({add_q_proj.get(), add_k_proj.get(), add_v_proj.get()});
  return fused;
}

bool fuse_qkv_projections_in(torch::nn::Module& model) {
  bool all = true;
  for (const auto& module : model.modules(/*include_self=*/false))
    if (auto* attention = dynamic_cast<FluxAttentionImpl*>(module.get())) all = attention->fuse_qkv_projections() && all;
  return all;
}

bool qkv_projections_fused_in(const torch::nn::Module& model) {
  for (const auto& module : model.modules(/*include_self=*/false))
    if (const auto* attention = dynamic_cast<const FluxAttentionImpl*>(module.get()))
      if (!attention->qkv_projections_fused()) return false;
  return true;
}

at::Tensor FluxAttentionImpl::attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  if (settings->mesh)
    return context_parallel_attention(q, k, v, *settings->mesh, scale,
                                      {.backend = settings->backend,
                                       .lengths = settings->mesh_lengths,
                                       .key_padding = settings->key_padding});
  return attention(q, k, v, scale, settings->backend, settings->key_padding);
}

FluxAttentionOutput FluxAttentionImpl::forward(const at::Tensor& hidden_states,
                                               const at::Tensor& encoder_hidden_states,
                                               const RotaryEmbedding& rotary) {
  const bool dual = !to_add_out.is_empty();
  if (dual != encoder_hidden_states.defined())
    throw Error(dual ? "FluxAttention: the dual-stream attention needs encoder_hidden_states"
                     : "FluxAttention: the single-stream attention takes no encoder_hidden_states");
  if (rotary.phasor.defined() && fused_qk_norm_rope_available(hidden_states, head_dim))
    return forward_fused(hidden_states, encoder_hidden_states, rotary);
  const std::vector<at::Tensor> image_qkv = project_qkv(hidden_states, to_q, to_k, to_v);
  at::Tensor q = split_heads(image_qkv[0], norm_q);
  at::Tensor k = split_heads(image_qkv[1], norm_k);
  at::Tensor v = image_qkv[2].view({hidden_states.size(0), hidden_states.size(1), heads, head_dim}).transpose(1, 2);
  const int64_t text_len = dual ? encoder_hidden_states.size(1) : 0;
  if (dual) {
    const at::Tensor& e = encoder_hidden_states;
    const std::vector<at::Tensor> text_qkv = project_qkv(e, add_q_proj, add_k_proj, add_v_proj);
    q = at::cat({split_heads(text_qkv[0], norm_added_q), q}, /*dim=*/2);
    k = at::cat({split_heads(text_qkv[1], norm_added_k), k}, /*dim=*/2);
    v = at::cat({text_qkv[2].view({e.size(0), e.size(1), heads, head_dim}).transpose(1, 2), v}, /*dim=*/2);
  }
  if (rotary.cos.size(0) != q.size(2))
    throw Error("FluxAttention: the rotary embedding has " + std::to_string(rotary.cos.size(0)) +
                " positions for a sequence of " + std::to_string(q.size(2)) + " tokens");
  q = apply_rotary_emb(q, rotary);
  k = apply_rotary_emb(k, rotary);

  at::Tensor out = attend(q, k, v).transpose(1, 2);  // [batch, seq, heads, head_dim]
  out = out.reshape({out.size(0), out.size(1), -1});
  if (!dual) return {out, at::Tensor()};
  at::Tensor text = out.narrow(1, 0, text_len);
  at::Tensor image = out.narrow(1, text_len, out.size(1) - text_len);
  return {to_out[0]->as<LinearImpl>()->forward(image), to_add_out(text)};
}

// On CUDA: q, k and v of the joint sequence [text, image] go straight into one [batch, tokens, heads,
// head_dim] buffer each (norm and rotary in one kernel for q and k), so no concatenation and no
// transposition copies; attention reads them as [batch, heads, tokens, head_dim] views, and cuDNN
// writes its output in the same layout, so the heads merge back without a copy either.
FluxAttentionOutput FluxAttentionImpl::forward_fused(const at::Tensor& hidden_states,
                                                     const at::Tensor& encoder_hidden_states,
                                                     const RotaryEmbedding& rotary) {
  const bool dual = encoder_hidden_states.defined();
  const int64_t batch = hidden_states.size(0);
  const int64_t text_len = dual ? encoder_hidden_states.size(1) : 0;
  const int64_t total = text_len + hidden_states.size(1);
  if (rotary.phasor.size(0) != total)
    throw Error("FluxAttention: the rotary embedding has " + std::to_string(rotary.phasor.size(0)) +
                " positions for a sequence of " + std::to_string(total) + " tokens");
  const at::TensorOptions options = hidden_states.options();
  const at::Tensor q = at::empty({batch, total, heads, head_dim}, options);
  const at::Tensor k = at::empty_like(q), v = at::empty_like(q);
  auto project = [&](const at::Tensor& x, Linear& to_q_, Linear& to_k_, Linear& to_v_, RMSNorm& norm_q_,
                     RMSNorm& norm_k_, int64_t offset) {
    if (x.size(1) == 0) return;  // a rank's empty shard of this stream (context parallelism)
    const at::Tensor phasor = rotary.phasor.narrow(0, offset, x.size(1));
    // Fused projections give column slices of one [batch, tokens, 3 * inner] output: the kernel reads
    // rows at any token stride (channels contiguous), and v's copy into its buffer reads them in place.
    const std::vector<at::Tensor> qkv = project_qkv(x, to_q_, to_k_, to_v_);
    fused_qk_norm_rope(qkv[0], *norm_q_, phasor, q, offset);
    fused_qk_norm_rope(qkv[1], *norm_k_, phasor, k, offset);
    v.narrow(1, offset, x.size(1)).copy_(qkv[2].view({batch, x.size(1), heads, head_dim}));
  };
  if (dual) project(encoder_hidden_states, add_q_proj, add_k_proj, add_v_proj, norm_added_q, norm_added_k, 0);
  project(hidden_states, to_q, to_k, to_v, norm_q, norm_k, text_len);

  at::Tensor out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2);
  out = out.reshape({batch, total, heads * head_dim});
  if (!dual) return {out, at::Tensor()};
  return {to_out[0]->as<LinearImpl>()->forward(out.narrow(1, text_len, total - text_len)),
          to_add_out(out.narrow(1, 0, text_len))};
}

FluxTransformerBlockImpl::FluxTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim,
                                                   const at::TensorOptions& options) {
  norm1 = register_module("norm1", AdaLayerNormZero(dim, options));
  norm1_context = register_module("norm1_context", AdaLayerNormZero(dim, options));
  attn = register_module("attn", FluxAttention(dim, heads, head_dim, /*added_kv=*/true, options));
  norm2 = register_module("norm2", LayerNorm(dim, kBlockNormEps, /*elementwise_affine=*/false, false, options));
  ff = register_module("ff", FeedForward(dim, dim, /*mult=*/4, options));
  norm2_context =
      register_module("norm2_context", LayerNorm(dim, kBlockNormEps, /*elementwise_affine=*/false, false, options));
  ff_context = register_module("ff_context", FeedForward(dim, dim, /*mult=*/4, options));
}

FluxBlockOutput FluxTransformerBlockImpl::forward(const at::Tensor& hidden_states,
                                                  const at::Tensor& encoder_hidden_states, const at::Tensor& temb,
                                                  const RotaryEmbedding& rotary) {
  AdaLayerNormZeroOutput image = norm1(hidden_states, temb);
  AdaLayerNormZeroOutput text = norm1_context(encoder_hidden_states, temb);
  FluxAttentionOutput attention = attn(image.hidden_states, text.hidden_states, rotary);

  // Gated residuals as one addcmul each (x + gate * branch).
  at::Tensor x = at::addcmul(hidden_states, image.gate_msa.unsqueeze(1), attention.hidden_states);
  x = at::addcmul(x, image.gate_mlp.unsqueeze(1), ff(modulated_layer_norm(*norm2, x, image.shift_mlp, image.scale_mlp)));

  at::Tensor c = at::addcmul(encoder_hidden_states, text.gate_msa.unsqueeze(1), attention.encoder_hidden_states);
  c = at::addcmul(c, text.gate_mlp.unsqueeze(1),
                  ff_context(modulated_layer_norm(*norm2_context, c, text.shift_mlp, text.scale_mlp)));
  return {clip_float16(c), x};
}

FluxSingleTransformerBlockImpl::FluxSingleTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim,
                                                               const at::TensorOptions& options, double mlp_ratio) {
  const auto mlp_dim = static_cast<int64_t>(static_cast<double>(dim) * mlp_ratio);
  norm = register_module("norm", AdaLayerNormZeroSingle(dim, options));
  proj_mlp = register_module("proj_mlp", Linear(dim, mlp_dim, /*bias=*/true, options));
  proj_out = register_module("proj_out", Linear(dim + mlp_dim, dim, /*bias=*/true, options));
  attn = register_module("attn", FluxAttention(dim, heads, head_dim, /*added_kv=*/false, options));
}

FluxBlockOutput FluxSingleTransformerBlockImpl::forward(const at::Tensor& hidden_states,
                                                        const at::Tensor& encoder_hidden_states,
                                                        const at::Tensor& temb, const RotaryEmbedding& rotary) {
  const int64_t text_len = encoder_hidden_states.size(1);
  // Each block returns its two streams as views of one output, so from the second single block on
  // they are already the concatenated sequence and need no copy (the first gets the dual blocks'
  // separate tensors, as does a block whose inputs a device map moved).
  at::Tensor residual = joint_sequence(encoder_hidden_states, hidden_states);
  if (!residual.defined()) residual = at::cat({encoder_hidden_states, hidden_states}, /*dim=*/1);
  AdaLayerNormZeroSingleOutput normed = norm(residual, temb);
  at::Tensor mlp = linear_gelu_tanh(*proj_mlp, normed.hidden_states);
  at::Tensor attention = attn(normed.hidden_states, at::Tensor(), rotary).hidden_states;
  at::Tensor x = at::addcmul(residual, normed.gate.unsqueeze(1), project_concatenation(*proj_out, attention, mlp));
  x = clip_float16(x);
  return {x.narrow(1, 0, text_len), x.narrow(1, text_len, x.size(1) - text_len)};
}

}  // namespace diffuse
