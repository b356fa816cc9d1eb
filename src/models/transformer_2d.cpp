#include "diffuse/models/transformer_2d.hpp"

#include <cmath>
#include <string>

#include "diffuse/error.hpp"

namespace diffuse {
namespace {

// Transformer2DModel's own group norm; the blocks' layer norms take norm_eps.
constexpr double kGroupNormEps = 1e-6;

}  // namespace

AttentionImpl::AttentionImpl(int64_t query_dim, int64_t cross_attention_dim, int64_t heads_, int64_t dim_head_,
                             const at::TensorOptions& options)
    : heads(heads_), dim_head(dim_head_) {
  const int64_t inner = heads * dim_head;
  const int64_t context_dim = cross_attention_dim > 0 ? cross_attention_dim : query_dim;
  to_q = register_module("to_q", Linear(query_dim, inner, /*bias=*/false, options));
  to_k = register_module("to_k", Linear(context_dim, inner, /*bias=*/false, options));
  to_v = register_module("to_v", Linear(context_dim, inner, /*bias=*/false, options));
  to_out = torch::nn::ModuleList();
  to_out->push_back(Linear(inner, query_dim, /*bias=*/true, options));
  to_out->push_back(NoParameters());  // dropout
  register_module("to_out", to_out);
}

at::Tensor AttentionImpl::forward(const at::Tensor& hidden_states, const at::Tensor& context) {
  const at::Tensor& source = context.defined() ? context : hidden_states;
  const int64_t batch = hidden_states.size(0), tokens = hidden_states.size(1);
  // [B, N, heads * dim_head] -> [B, heads, N, dim_head]
  auto split_heads = [&](const at::Tensor& x) { return x.view({batch, -1, heads, dim_head}).transpose(1, 2); };
  const at::Tensor q = split_heads(to_q(hidden_states));
  const at::Tensor k = split_heads(to_k(source));
  const at::Tensor v = split_heads(to_v(source));
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim_head));
  at::Tensor out;
  if (q.scalar_type() == at::kDouble) {
    // The backends compute in float32 at most; float64 (parity checks) keeps its precision here.
    out = at::matmul(at::softmax(at::matmul(q, k.transpose(-2, -1)) * scale, -1), v);
  } else {
    // Scores and softmax in float32 on the math path (diffusers' upcast_attention is then moot); the
    // fused CUDA kernels accumulate in float32 too.
    out = attention(q, k, v, scale, backend);
  }
  out = out.transpose(1, 2).reshape({batch, tokens, heads * dim_head});
  return to_out[0]->as<LinearImpl>()->forward(out);
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t dim_head,
                                                     int64_t cross_attention_dim, double norm_eps,
                                                     const at::TensorOptions& options) {
  norm1 = register_module("norm1", LayerNorm(dim, norm_eps, /*elementwise_affine=*/true, /*bias=*/true, options));
  attn1 = register_module("attn1", Attention(dim, /*cross_attention_dim=*/0, heads, dim_head, options));
  norm2 = register_module("norm2", LayerNorm(dim, norm_eps, true, true, options));
  attn2 = register_module("attn2", Attention(dim, cross_attention_dim, heads, dim_head, options));
  norm3 = register_module("norm3", LayerNorm(dim, norm_eps, true, true, options));
  ff = register_module("ff", FeedForward(dim, dim, /*mult=*/4, options, "geglu"));
}

at::Tensor BasicTransformerBlockImpl::forward(const at::Tensor& hidden_states,
                                              const at::Tensor& encoder_hidden_states) {
  at::Tensor x = attn1(norm1(hidden_states)) + hidden_states;
  x = attn2(norm2(x), encoder_hidden_states) + x;
  return ff(norm3(x)) + x;
}

Transformer2DModelImpl::Transformer2DModelImpl(const Transformer2DModelOptions& transformer,
                                               const at::TensorOptions& options)
    : options_(transformer) {
  const Transformer2DModelOptions& o = options_;
  const int64_t inner = o.num_attention_heads * o.attention_head_dim;
  if (o.num_attention_heads <= 0 || o.attention_head_dim <= 0)
    throw Error("Transformer2DModel: num_attention_heads and attention_head_dim must be positive, got " +
                std::to_string(o.num_attention_heads) + " and " + std::to_string(o.attention_head_dim));
  norm = register_module("norm", GroupNorm(o.norm_num_groups, o.in_channels, kGroupNormEps, /*affine=*/true, options));
  if (o.use_linear_projection) {
    proj_in_linear = register_module("proj_in", Linear(o.in_channels, inner, true, options));
  } else {
    proj_in_conv = register_module("proj_in", Conv2d(o.in_channels, inner, 1, 1, 0, true, options));
  }
  transformer_blocks = torch::nn::ModuleList();
  for (int64_t i = 0; i < o.num_layers; ++i)
    transformer_blocks->push_back(BasicTransformerBlock(inner, o.num_attention_heads, o.attention_head_dim,
                                                        o.cross_attention_dim, o.norm_eps, options));
  register_module("transformer_blocks", transformer_blocks);
  if (o.use_linear_projection) {
    proj_out_linear = register_module("proj_out", Linear(inner, o.in_channels, true, options));
  } else {
    proj_out_conv = register_module("proj_out", Conv2d(inner, o.in_channels, 1, 1, 0, true, options));
  }
}

at::Tensor Transformer2DModelImpl::forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states) {
  const int64_t batch = hidden_states.size(0), height = hidden_states.size(2), width = hidden_states.size(3);
  // [B, C, H, W] <-> [B, H*W, C]: one token per position, channels last. Both are views when the maps
  // are channels-last (CUDA half precision); the map comes back in the layout it came in.
  auto to_tokens = [&](const at::Tensor& x) { return x.permute({0, 2, 3, 1}).reshape({batch, height * width, -1}); };
  auto to_map = [&](const at::Tensor& x) {
    return x.reshape({batch, height, width, -1}).permute({0, 3, 1, 2}).contiguous(hidden_states.suggest_memory_format());
  };
  const at::Tensor normed = norm(hidden_states);
  at::Tensor x = options_.use_linear_projection ? proj_in_linear(to_tokens(normed)) : to_tokens(proj_in_conv(normed));
  for (const auto& block : *transformer_blocks)
    x = block->as<BasicTransformerBlockImpl>()->forward(x, encoder_hidden_states);
  const at::Tensor out = options_.use_linear_projection ? to_map(proj_out_linear(x)) : proj_out_conv(to_map(x));
  return out + hidden_states;
}

}  // namespace diffuse
