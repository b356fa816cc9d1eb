#pragma once
// The language model of transformers' Qwen2_5_VLForConditionalGeneration, run as Qwen-Image's text
// encoder: QwenImagePipeline calls the whole model on the templated prompt and takes
// `hidden_states[-1]`, the last decoder layer's output after the final RMSNorm. The vision tower and the
// LM head of the checkpoint are never read (weight_load_options' ignored prefixes).
//
// A Qwen2 decoder: token embedding; per layer x + attn(input_layernorm(x)), then
// x + mlp(post_attention_layernorm(x)); a final RMSNorm. Attention is causal and grouped-query
// (num_attention_heads queries over num_key_value_heads keys and values, bias on q/k/v, none on o) with
// the multimodal rotary embedding (M-RoPE): each head's channel pairs are split by mrope_section
// between three position axes (temporal, height, width). For text alone the three positions are equal
// and it is the plain rotary embedding. Positions come from the attention mask as transformers' text-only
// get_rope_index computes them: cumsum(mask) - 1, so that each row's first valid token is position 0
// under left padding too (padding positions get 1, and are never attended to).
//
// Children carry the checkpoint's names ("model.embed_tokens", "model.layers.<i>", "model.norm"), so
// text_encoder/model.safetensors (or its shards) loads as it is:
//
//   auto encoder = load_model<Qwen2_5_VLTextModel>(dir / "text_encoder", {.dtype = at::kBFloat16});
//   at::Tensor hidden = encoder->forward(input_ids, attention_mask);   // [batch, tokens, hidden_size]

#include <ATen/ATen.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <utility>
#include <vector>

#include "diffuse/models/attention_backend.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/qwen2_5_vl_text_config.hpp"
#include "diffuse/models/weights.hpp"
#include "diffuse/placement/placeable_model.hpp"

namespace diffuse {

// Text-only M-RoPE positions from a [batch, tokens] mask (nonzero = a real token): [3, batch, tokens]
// int64, cumsum(mask) - 1 on every axis, 1 where the mask is 0.
at::Tensor qwen2_5_vl_text_positions(const at::Tensor& attention_mask);

// The rotary embedding's cos and sin for `positions` [3, batch, tokens], [batch, tokens, head_dim] each in
// `dtype`: per channel pair, the frequency theta^(-2i/head_dim) times the position on the axis that
// mrope_section gives that pair (both halves of the head alike), computed in float32.
std::pair<at::Tensor, at::Tensor> qwen2_5_vl_rotary_cos_sin(const at::Tensor& positions, int64_t head_dim,
                                                            double theta, const std::vector<int64_t>& mrope_section,
                                                            c10::ScalarType dtype);

// Grouped-query self-attention with the rotary embedding. q_proj, k_proj, v_proj have biases; o_proj none.
class Qwen2_5_VLAttentionImpl : public torch::nn::Module {
 public:
  Qwen2_5_VLAttentionImpl(const Qwen2_5_VLTextConfig& config, const at::TensorOptions& options);
  // hidden_states [batch, tokens, hidden]; cos/sin [batch, tokens, head_dim]; `keep` [batch, 1, tokens,
  // tokens] bool (true: the query may attend to the key: causal and a real token), or undefined when no
  // token is padding (then plain causal attention).
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& cos, const at::Tensor& sin,
                     const at::Tensor& keep);

  int64_t num_heads, num_key_value_heads, head_dim;
  AttentionBackend backend = AttentionBackend::automatic;  // set by the model
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(Qwen2_5_VLAttention);

// SwiGLU: down_proj(act(gate_proj(x)) * up_proj(x)), no biases.
class Qwen2_5_VLMLPImpl : public torch::nn::Module {
 public:
  Qwen2_5_VLMLPImpl(const Qwen2_5_VLTextConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states);
  std::string hidden_act;
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Qwen2_5_VLMLP);

class Qwen2_5_VLDecoderLayerImpl : public torch::nn::Module {
 public:
  Qwen2_5_VLDecoderLayerImpl(const Qwen2_5_VLTextConfig& config, const at::TensorOptions& options);
  // As Qwen2_5_VLAttention::forward; returns [batch, tokens, hidden].
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& cos, const at::Tensor& sin,
                     const at::Tensor& keep);
  Qwen2_5_VLAttention self_attn{nullptr};
  Qwen2_5_VLMLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(Qwen2_5_VLDecoderLayer);

// transformers' Qwen2_5_VLTextModel, the checkpoint's "model." (it holds no parameters of its own: the
// model runs its units one by one, for placement).
class Qwen2_5_VLTextStackImpl : public torch::nn::Module {
 public:
  Qwen2_5_VLTextStackImpl(const Qwen2_5_VLTextConfig& config, const at::TensorOptions& options);
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Qwen2_5_VLTextStack);

// Its units, for placement: model.embed_tokens, model.layers.<i>, model.norm.
class Qwen2_5_VLTextModelImpl : public torch::nn::Module, public PlaceableModel {
 public:
  using Config = Qwen2_5_VLTextConfig;
  // The checkpoint's vision tower ("visual." or "model.visual.") and "lm_head." are skipped unread.
  static WeightLoadOptions weight_load_options(c10::ScalarType dtype);

  Qwen2_5_VLTextModelImpl(const Qwen2_5_VLTextConfig& config, const at::TensorOptions& options);

  // input_ids [batch, tokens] integer ids below vocab_size; attention_mask [batch, tokens] (1 for real
  // tokens, 0 for padding, left or right), or undefined for all ones -> [batch, tokens, hidden_size] in
  // the model's dtype, after the final norm (transformers' hidden_states[-1]). Rows are independent:
  // a padded row's real tokens get what they get alone. Throws diffuse::Error for ids out of range and
  // for shapes that do not fit.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {});

  // The kernel the attention runs (models/attention_backend.hpp). With padding the mask goes through
  // PyTorch's scaled_dot_product_attention on CUDA (the kernels that take a mask), so "flash", which
  // takes none, is refused then; "math" runs anywhere.
  void set_attention_backend(AttentionBackend backend);
  AttentionBackend attention_backend() const { return backend_; }

  const Qwen2_5_VLTextConfig& config() const { return config_; }

  // Placement (placement/placeable_model.hpp).
  std::vector<std::string> unit_containers() const override;
  uint64_t activation_estimate() const override;

  Qwen2_5_VLTextStack model{nullptr};

 private:
  Qwen2_5_VLTextConfig config_;
  AttentionBackend backend_ = AttentionBackend::automatic;
};
TORCH_MODULE(Qwen2_5_VLTextModel);

}  // namespace diffuse
