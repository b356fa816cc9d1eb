#pragma once
// The parts of Qwen-Image's transformer (diffusers' transformer_qwenimage.py): the timestep embedding
// and the dual-stream block. The block is an MM-DiT block like FLUX.1's: image and text tokens keep
// their own weights (modulation, norms, MLP) and meet only in one joint attention over [text, image],
// which is FLUX's attention exactly (the same projections, per-head RMSNorm on q/k and on the added
// q/k, the rotary embedding, to_out / to_add_out), so it is FluxAttention (flux_blocks.hpp) here too;
// a padded text is masked there through the AttentionSettings the transformer shares with it.

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include "diffuse/models/embeddings.hpp"
#include "diffuse/models/feed_forward.hpp"
#include "diffuse/models/flux_blocks.hpp"
#include "diffuse/models/layers.hpp"

namespace diffuse {

// diffusers' QwenTimestepProjEmbeddings (without the additional-t-cond variant): 256 sinusoids of the
// timestep (cos first, frequencies from 1, scaled by 1000, as Timesteps(256, True, 0, scale=1000)),
// then timestep_embedder (linear, SiLU, linear) to the model width.
class QwenTimestepProjEmbeddingsImpl : public torch::nn::Module {
 public:
  QwenTimestepProjEmbeddingsImpl(int64_t embedding_dim, const at::TensorOptions& options);
  // timestep [batch] as the pipeline passes it (t / 1000), in the compute dtype -> temb [batch, dim] in
  // `dtype`. The sinusoids are taken in float32 (of the timestep as given) and cast to `dtype`.
  at::Tensor forward(const at::Tensor& timestep, c10::ScalarType dtype);

  static constexpr int64_t kTimestepChannels = 256;
  TimestepEmbedding timestep_embedder{nullptr};
};
TORCH_MODULE(QwenTimestepProjEmbeddings);

// What a block returns: both streams, text first as diffusers returns them.
struct QwenImageBlockOutput {
  at::Tensor encoder_hidden_states;  // [batch, text_seq, dim]
  at::Tensor hidden_states;          // [batch, image_seq, dim]
};

// diffusers' QwenImageTransformerBlock (zero_cond_t off). Each stream: img_mod / txt_mod (SiLU, then a
// linear to 6 * dim: shift, scale, gate before attention, the same before the MLP), LayerNorms without
// parameters (eps 1e-6), gated residuals, and a tanh-GELU FeedForward (img_mlp / txt_mlp).
class QwenImageTransformerBlockImpl : public torch::nn::Module {
 public:
  QwenImageTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, const at::TensorOptions& options);
  // hidden_states [batch, image_seq, dim], encoder_hidden_states [batch, text_seq, dim], temb [batch, dim];
  // `rotary` has one row per token of [text, image].
  QwenImageBlockOutput forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                               const at::Tensor& temb, const RotaryEmbedding& rotary);

  torch::nn::ModuleList img_mod{nullptr}, txt_mod{nullptr};  // [SiLU (no parameters), Linear(dim, 6 dim)]
  LayerNorm img_norm1{nullptr}, img_norm2{nullptr}, txt_norm1{nullptr}, txt_norm2{nullptr};
  FluxAttention attn{nullptr};
  FeedForward img_mlp{nullptr}, txt_mlp{nullptr};

 private:
  Linear img_mod_linear_{nullptr}, txt_mod_linear_{nullptr};  // img_mod.1, txt_mod.1
};
TORCH_MODULE(QwenImageTransformerBlock);

}  // namespace diffuse
