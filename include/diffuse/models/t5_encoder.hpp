#pragma once
// transformers' T5EncoderModel: the encoder half of T5 (T5-v1.1-XXL in FLUX.1's `text_encoder_2`),
// whose last hidden state is the transformer's text sequence (prompt_embeds).
//
// T5 differs from a textbook transformer in ways that all change the numbers:
// - RMS layer norm without mean subtraction or bias (T5LayerNorm), variance in float32;
// - no 1/sqrt(d) scaling of attention scores (folded into the weights at training time);
// - a learned relative position bias, bucketed logarithmically, computed once in block 0 and added
//   to the scores of every block;
// - a gated feed-forward (wi_0 activated times wi_1) for "gated-*" configs, plain (wi) otherwise.
// Under float16 it also does what transformers does to stay finite: `wo` is kept in float32 (the
// activations are cast to its dtype before it) and infinities in the hidden states are clamped.

#include <ATen/ATen.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <filesystem>
#include <optional>

#include "diffuse/io/configs.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/weights.hpp"
#include "diffuse/placement/placeable_model.hpp"

namespace diffuse {

// T5's bucket of each relative position (key - query), bidirectional as in the encoder: half of the
// buckets for each sign, exact up to num_buckets/4, then logarithmic up to max_distance.
at::Tensor t5_relative_position_bucket(const at::Tensor& relative_position, int64_t num_buckets, int64_t max_distance);

class T5AttentionImpl : public torch::nn::Module {
 public:
  T5AttentionImpl(const T5Config& config, bool has_relative_attention_bias, const at::TensorOptions& options);
  // position_bias: [1, heads, L, L], added to the unscaled scores.
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& position_bias);
  // [1, heads, query_length, key_length] from relative_attention_bias (block 0 only).
  at::Tensor compute_bias(int64_t query_length, int64_t key_length);

  int64_t num_heads, d_kv, num_buckets, max_distance;
  Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  Embedding relative_attention_bias{nullptr};  // null except in block 0
};
TORCH_MODULE(T5Attention);

// layer.0: x + SelfAttention(layer_norm(x)).
class T5LayerSelfAttentionImpl : public torch::nn::Module {
 public:
  T5LayerSelfAttentionImpl(const T5Config& config, bool has_relative_attention_bias, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& position_bias);
  T5Attention SelfAttention{nullptr};
  RMSNorm layer_norm{nullptr};  // T5LayerNorm has the same arithmetic as diffusers' RMSNorm
};
TORCH_MODULE(T5LayerSelfAttention);

// The feed-forward, gated (wi_0, wi_1, wo) or plain (wi, wo).
class T5DenseActDenseImpl : public torch::nn::Module {
 public:
  T5DenseActDenseImpl(const T5Config& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states);
  bool is_gated;
  std::string dense_act_fn;
  Linear wi{nullptr}, wi_0{nullptr}, wi_1{nullptr}, wo{nullptr};
};
TORCH_MODULE(T5DenseActDense);

// layer.1: x + DenseReluDense(layer_norm(x)).
class T5LayerFFImpl : public torch::nn::Module {
 public:
  T5LayerFFImpl(const T5Config& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states);
  T5DenseActDense DenseReluDense{nullptr};
  RMSNorm layer_norm{nullptr};
};
TORCH_MODULE(T5LayerFF);

class T5BlockImpl : public torch::nn::Module {
 public:
  T5BlockImpl(const T5Config& config, bool has_relative_attention_bias, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& position_bias);
  torch::nn::ModuleList layer{nullptr};  // [T5LayerSelfAttention, T5LayerFF]
};
TORCH_MODULE(T5Block);

// transformers' T5Stack, encoder only (the embedding is the model's `shared`, not registered here).
class T5StackImpl : public torch::nn::Module, public HookedModule {
 public:
  T5StackImpl(const T5Config& config, const at::TensorOptions& options);
  at::Tensor forward(at::Tensor inputs_embeds);
  torch::nn::ModuleList block{nullptr};
  RMSNorm final_layer_norm{nullptr};
};
TORCH_MODULE(T5Stack);

// Its units, for placement: shared, encoder.block.N, encoder.final_layer_norm.
class T5EncoderModelImpl : public torch::nn::Module, public PlaceableModel {
 public:
  using Config = T5Config;
  // The checkpoint's "encoder.embed_tokens.weight" is a copy of the tied "shared.weight"; under
  // float16 the `wo` weights stay float32 (transformers' _keep_in_fp32_modules).
  static WeightLoadOptions weight_load_options(c10::ScalarType dtype);
  T5EncoderModelImpl(const T5Config& config, const at::TensorOptions& options);
  // input_ids: [batch, tokens] -> last_hidden_state [batch, tokens, d_model]. No attention mask: the
  // Flux pipeline passes none, so padding tokens are attended to, as there.
  at::Tensor forward(const at::Tensor& input_ids);
  const T5Config& config() const { return config_; }

  // Placement (placement/placeable_model.hpp).
  std::vector<std::string> unit_containers() const override;
  uint64_t activation_estimate() const override;

  Embedding shared{nullptr};  // the token embedding; transformers ties encoder.embed_tokens to it
  T5Stack encoder{nullptr};

 private:
  T5Config config_;
};
TORCH_MODULE(T5EncoderModel);

// Reads `folder`/config.json and the folder's safetensors (single file or sharded) into a model in
// `dtype` on `device`. A checkpoint's "encoder.embed_tokens.weight", a copy of the tied
// "shared.weight", is accepted and skipped. Under float16 the `wo` weights stay float32.
T5EncoderModel load_t5_encoder(const std::filesystem::path& folder, c10::ScalarType dtype = c10::kFloat,
                               c10::Device device = c10::kCPU);

}  // namespace diffuse
