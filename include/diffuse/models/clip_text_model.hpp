#pragma once
// transformers' CLIPTextModel: the text tower of CLIP, FLUX.1's `text_encoder`. FLUX.1 uses only its
// pooled output (the hidden state at the end-of-text token), which conditions the transformer's
// timestep embedding. Children carry transformers' names, so model.safetensors loads as it is.

#include <ATen/ATen.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <filesystem>

#include "diffuse/io/configs.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/placement/placeable_model.hpp"

namespace diffuse {

struct ClipTextOutput {
  at::Tensor last_hidden_state;  // [batch, tokens, hidden]
  at::Tensor pooler_output;      // [batch, hidden]: last_hidden_state at each row's end-of-text token
};

// Token embeddings plus learned absolute positions 0..L-1 (computed per call, not a stored buffer).
class ClipTextEmbeddingsImpl : public torch::nn::Module {
 public:
  ClipTextEmbeddingsImpl(const ClipTextConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input_ids);
  Embedding token_embedding{nullptr}, position_embedding{nullptr};
};
TORCH_MODULE(ClipTextEmbeddings);

// Multi-head self-attention with a causal mask (CLIP's text tower is autoregressive in shape).
class ClipAttentionImpl : public torch::nn::Module {
 public:
  ClipAttentionImpl(const ClipTextConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states);
  int64_t num_heads;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(ClipAttention);

class ClipMlpImpl : public torch::nn::Module {
 public:
  ClipMlpImpl(const ClipTextConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states);
  std::string hidden_act;
  Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ClipMlp);

// Pre-norm transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x)).
class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  ClipEncoderLayerImpl(const ClipTextConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states);
  LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  ClipAttention self_attn{nullptr};
  ClipMlp mlp{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

class ClipEncoderImpl : public torch::nn::Module, public HookedModule {
 public:
  ClipEncoderImpl(const ClipTextConfig& config, const at::TensorOptions& options);
  at::Tensor forward(at::Tensor hidden_states);
  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(ClipEncoder);

// Its units, for placement: embeddings, encoder.layers.N, final_layer_norm.
class ClipTextModelImpl : public torch::nn::Module, public PlaceableModel {
 public:
  using Config = ClipTextConfig;
  ClipTextModelImpl(const ClipTextConfig& config, const at::TensorOptions& options);
  // input_ids: [batch, tokens] integer ids, tokens <= max_position_embeddings.
  ClipTextOutput forward(const at::Tensor& input_ids);
  const ClipTextConfig& config() const { return config_; }

  // Placement (placement/placeable_model.hpp).
  std::vector<std::string> unit_containers() const override;
  uint64_t activation_estimate() const override;

  ClipTextEmbeddings embeddings{nullptr};
  ClipEncoder encoder{nullptr};
  LayerNorm final_layer_norm{nullptr};

 private:
  ClipTextConfig config_;
};
TORCH_MODULE(ClipTextModel);

// Reads `folder`/config.json and the folder's safetensors (single file or sharded) into a model in
// `dtype` on `device`. Every checkpoint tensor must be consumed; mismatches throw diffuse::Error.
ClipTextModel load_clip_text_model(const std::filesystem::path& folder, c10::ScalarType dtype = c10::kFloat,
                                   c10::Device device = c10::kCPU);

}  // namespace diffuse
