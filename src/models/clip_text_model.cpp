#include "diffuse/models/clip_text_model.hpp"

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/models/attention.hpp"
#include "diffuse/models/weights.hpp"

namespace diffuse {

ClipTextEmbeddingsImpl::ClipTextEmbeddingsImpl(const ClipTextConfig& config, const at::TensorOptions& options) {
  token_embedding = register_module("token_embedding", Embedding(config.vocab_size, config.hidden_size, options));
  position_embedding =
      register_module("position_embedding", Embedding(config.max_position_embeddings, config.hidden_size, options));
}

at::Tensor ClipTextEmbeddingsImpl::forward(const at::Tensor& input_ids) {
  const int64_t length = input_ids.size(-1);
  const int64_t max_positions = position_embedding->weight.size(0);
  if (length > max_positions)
    throw Error("CLIPTextModel: " + std::to_string(length) + " tokens exceed max_position_embeddings " +
                std::to_string(max_positions));
  at::Tensor position_ids = at::arange(length, input_ids.options().dtype(at::kLong)).unsqueeze(0);
  return token_embedding->forward(input_ids) + position_embedding->forward(position_ids);
}

ClipAttentionImpl::ClipAttentionImpl(const ClipTextConfig& config, const at::TensorOptions& options)
    : num_heads(config.num_attention_heads) {
  const int64_t hidden = config.hidden_size;
  if (hidden % num_heads != 0)
    throw Error("CLIPTextModel: hidden_size " + std::to_string(hidden) + " is not divisible by num_attention_heads " +
                std::to_string(num_heads));
  q_proj = register_module("q_proj", Linear(hidden, hidden, true, options));
  k_proj = register_module("k_proj", Linear(hidden, hidden, true, options));
  v_proj = register_module("v_proj", Linear(hidden, hidden, true, options));
  out_proj = register_module("out_proj", Linear(hidden, hidden, true, options));
}

at::Tensor ClipAttentionImpl::forward(const at::Tensor& hidden_states) {
  const int64_t batch = hidden_states.size(0), length = hidden_states.size(1), hidden = hidden_states.size(2);
  const int64_t head_dim = hidden / num_heads;
  // [B, L, H] -> [B, heads, L, head_dim]
  auto heads = [&](const at::Tensor& x) { return x.view({batch, length, num_heads, head_dim}).transpose(1, 2); };
  at::Tensor q = heads(q_proj->forward(hidden_states));
  at::Tensor k = heads(k_proj->forward(hidden_states));
  at::Tensor v = heads(v_proj->forward(hidden_states));
  AttentionOptions attention;
  attention.is_causal = true;
  at::Tensor out = diffuse::scaled_dot_product_attention(q, k, v, attention);
  return out_proj->forward(out.transpose(1, 2).reshape({batch, length, hidden}));
}

ClipMlpImpl::ClipMlpImpl(const ClipTextConfig& config, const at::TensorOptions& options)
    : hidden_act(config.hidden_act) {
  fc1 = register_module("fc1", Linear(config.hidden_size, config.intermediate_size, true, options));
  fc2 = register_module("fc2", Linear(config.intermediate_size, config.hidden_size, true, options));
  activation(at::zeros({1}), hidden_act);  // an unknown name fails at construction, not mid-inference
}

at::Tensor ClipMlpImpl::forward(const at::Tensor& hidden_states) {
  return fc2->forward(activation(fc1->forward(hidden_states), hidden_act));
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const ClipTextConfig& config, const at::TensorOptions& options) {
  self_attn = register_module("self_attn", ClipAttention(config, options));
  layer_norm1 = register_module("layer_norm1", LayerNorm(config.hidden_size, config.layer_norm_eps, true, true, options));
  mlp = register_module("mlp", ClipMlp(config, options));
  layer_norm2 = register_module("layer_norm2", LayerNorm(config.hidden_size, config.layer_norm_eps, true, true, options));
}

at::Tensor ClipEncoderLayerImpl::forward(const at::Tensor& hidden_states) {
  at::Tensor x = hidden_states + self_attn->forward(layer_norm1->forward(hidden_states));
  return x + mlp->forward(layer_norm2->forward(x));
}

ClipEncoderImpl::ClipEncoderImpl(const ClipTextConfig& config, const at::TensorOptions& options) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layers->push_back(ClipEncoderLayer(config, options));
}

at::Tensor ClipEncoderImpl::forward(at::Tensor hidden_states) {
  for (const auto& layer : *layers) hidden_states = forward_unit(*layer->as<ClipEncoderLayerImpl>(), hidden_states);
  return hidden_states;
}

ClipTextModelImpl::ClipTextModelImpl(const ClipTextConfig& config, const at::TensorOptions& options)
    : config_(config) {
  embeddings = register_module("embeddings", ClipTextEmbeddings(config, options));
  encoder = register_module("encoder", ClipEncoder(config, options));
  final_layer_norm =
      register_module("final_layer_norm", LayerNorm(config.hidden_size, config.layer_norm_eps, true, true, options));
}

ClipTextOutput ClipTextModelImpl::forward(const at::Tensor& input_ids) {
  if (input_ids.dim() != 2)
    throw Error("CLIPTextModel: input_ids must be [batch, tokens], got " + std::to_string(input_ids.dim()) +
                " dimensions");
  const at::Tensor ids = input_ids.to(embeddings->token_embedding->weight.device(), at::kLong);
  at::Tensor hidden = forward_unit(*final_layer_norm, encoder->forward(forward_unit(*embeddings, ids)));

  // The end-of-text position per row. transformers keeps the legacy rule for configs whose
  // eos_token_id is still 2 (the highest id is the eos token in the original vocabulary); otherwise
  // the first position holding eos_token_id (padding may repeat it, as FLUX.1's tokenizer does).
  // Under a device map the last layer may run elsewhere than the embeddings: index where `hidden` is.
  at::Tensor eos_position = (config_.eos_token_id == 2 ? ids.argmax(-1)
                                                       : ids.eq(config_.eos_token_id).to(at::kInt).argmax(-1))
                                .to(hidden.device());
  at::Tensor rows = at::arange(ids.size(0), ids.options().device(hidden.device()));
  at::Tensor pooled = hidden.index({rows, eos_position});
  return {hidden, pooled};
}

ClipTextModel load_clip_text_model(const std::filesystem::path& folder, c10::ScalarType dtype, c10::Device device) {
  return load_pretrained<ClipTextModel, ClipTextConfig>(folder, {.dtype = dtype, .device = device});
}

std::vector<std::string> ClipTextModelImpl::unit_containers() const { return {"", "encoder", "encoder.layers"}; }

uint64_t ClipTextModelImpl::activation_estimate() const {
  const auto& c = config_;
  return static_cast<uint64_t>(c.max_position_embeddings) * static_cast<uint64_t>(3 * c.intermediate_size + 6 * c.hidden_size) *
         weight_element_bytes(*this);
}

}  // namespace diffuse
