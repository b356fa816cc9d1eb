#pragma once
// The spatial transformer of SD's UNet (diffusers' transformer_2d.py and attention.py): a feature map
// [B, C, H, W] becomes H*W tokens that attend to each other and to the text (cross-attention), and
// goes back to a feature map plus its input. Only the continuous-input form the UNet uses is here
// (layer norms, GEGLU feed-forward; no patches, no ada-norms, no GLIGEN). Children carry diffusers'
// names: `attentions.0.transformer_blocks.0.attn2.to_k.weight` loads as is.

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include "diffuse/models/attention_backend.hpp"
#include "diffuse/models/feed_forward.hpp"
#include "diffuse/models/layers.hpp"

namespace diffuse {

// diffusers' Attention as BasicTransformerBlock builds it: to_q, to_k, to_v without bias, heads of
// dim_head channels, to_out.0 with bias (to_out.1 is dropout). Self-attention when forward gets no
// context; cross-attention to `context` otherwise (keys and values projected from cross_attention_dim).
class AttentionImpl : public torch::nn::Module {
 public:
  // cross_attention_dim 0: self-attention only (keys and values come from query_dim).
  AttentionImpl(int64_t query_dim, int64_t cross_attention_dim, int64_t heads, int64_t dim_head,
                const at::TensorOptions& options);
  // hidden_states [B, N, query_dim], context [B, M, cross_attention_dim] or undefined -> [B, N, query_dim].
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& context = {});

  int64_t heads, dim_head;
  // The kernel (models/attention_backend.hpp); the UNet sets it on every attention it has.
  AttentionBackend backend = AttentionBackend::automatic;
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};  // [Linear, dropout placeholder]
};
TORCH_MODULE(Attention);

// diffusers' BasicTransformerBlock with norm_type "layer_norm" and activation "geglu":
//   x = attn1(norm1(x)) + x;  x = attn2(norm2(x), context) + x;  x = ff(norm3(x)) + x
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t dim_head, int64_t cross_attention_dim, double norm_eps,
                            const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states);

  LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

// The arguments the UNet's blocks give diffusers' Transformer2DModel, with its defaults.
struct Transformer2DModelOptions {
  int64_t num_attention_heads = 16;
  int64_t attention_head_dim = 88;
  int64_t in_channels = 0;  // also the output channels; heads * head_dim is the tokens' width
  int64_t num_layers = 1;   // BasicTransformerBlocks
  int64_t norm_num_groups = 32;
  int64_t cross_attention_dim = 0;  // 0: the blocks' attn2 attends to the tokens themselves
  // proj_in / proj_out: 1x1 convolutions (SD 1.x) or linear layers over the tokens (SD 2.x).
  bool use_linear_projection = false;
  double norm_eps = 1e-5;  // of the blocks' layer norms (the group norm's eps is 1e-6)
};

// Transformer2DModel with continuous input: GroupNorm (eps 1e-6), proj_in, transformer_blocks,
// proj_out, plus the input.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  Transformer2DModelImpl(const Transformer2DModelOptions& transformer, const at::TensorOptions& options);
  // hidden_states [B, C, H, W], encoder_hidden_states [B, M, cross_attention_dim] -> [B, C, H, W].
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states);

  GroupNorm norm{nullptr};
  // proj_in and proj_out: the 1x1 convolutions, or with use_linear_projection the linear layers (the
  // other pair stays empty). Both pairs' weights load under the names proj_in and proj_out.
  Conv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};
  Linear proj_in_linear{nullptr}, proj_out_linear{nullptr};
  torch::nn::ModuleList transformer_blocks{nullptr};

 private:
  Transformer2DModelOptions options_;
};
TORCH_MODULE(Transformer2DModel);

}  // namespace diffuse
