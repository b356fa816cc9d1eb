#include "diffuse/models/t5_encoder.hpp"

#include <cmath>
#include <limits>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/models/attention.hpp"
#include "diffuse/models/weights.hpp"

namespace diffuse {
namespace {

// transformers clamps float16 hidden states after each sub-layer so that an overflow to inf does not
// turn into NaN further on; with an inf present the bound is pulled 1000 below the largest half.
// Tensor bounds keep the decision on the device (no host synchronisation).
at::Tensor clamp_float16(const at::Tensor& hidden_states) {
  if (hidden_states.scalar_type() != at::kHalf) return hidden_states;
  const double largest = 65504.0;  // torch.finfo(torch.float16).max
  const auto options = hidden_states.options().dtype(at::kFloat);
  at::Tensor bound = at::where(at::isinf(hidden_states).any(), at::scalar_tensor(largest - 1000.0, options),
                               at::scalar_tensor(largest, options));
  return at::clamp(hidden_states, bound.neg(), bound);
}

}  // namespace

at::Tensor t5_relative_position_bucket(const at::Tensor& relative_position, int64_t num_buckets,
                                       int64_t max_distance) {
  // Encoder attention is bidirectional: the upper half of the buckets is for keys after the query.
  num_buckets /= 2;
  at::Tensor buckets = relative_position.gt(0).to(at::kLong) * num_buckets;
  at::Tensor distance = relative_position.abs();
  // Half of each side's buckets are exact distances; the rest grow logarithmically to max_distance.
  const int64_t max_exact = num_buckets / 2;
  at::Tensor is_small = distance.lt(max_exact);
  at::Tensor if_large = (at::log(distance.to(at::kFloat) / static_cast<double>(max_exact)) /
                         std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)) *
                         static_cast<double>(num_buckets - max_exact))
                            .to(at::kLong) +
                        max_exact;
  if_large = at::clamp_max(if_large, num_buckets - 1);
  return buckets + at::where(is_small, distance, if_large);
}

T5AttentionImpl::T5AttentionImpl(const T5Config& config, bool has_relative_attention_bias,
                                 const at::TensorOptions& options)
    : num_heads(config.num_heads),
      d_kv(config.d_kv),
      num_buckets(config.relative_attention_num_buckets),
      max_distance(config.relative_attention_max_distance) {
  const int64_t inner = num_heads * d_kv;
  q = register_module("q", Linear(config.d_model, inner, false, options));
  k = register_module("k", Linear(config.d_model, inner, false, options));
  v = register_module("v", Linear(config.d_model, inner, false, options));
  o = register_module("o", Linear(inner, config.d_model, false, options));
  if (has_relative_attention_bias)
    relative_attention_bias = register_module("relative_attention_bias", Embedding(num_buckets, num_heads, options));
}

at::Tensor T5AttentionImpl::compute_bias(int64_t query_length, int64_t key_length) {
  if (!relative_attention_bias) throw Error("T5Attention: compute_bias called on a block without relative_attention_bias");
  const auto index_options = at::TensorOptions().dtype(at::kLong).device(relative_attention_bias->weight.device());
  at::Tensor context_position = at::arange(query_length, index_options).unsqueeze(1);
  at::Tensor memory_position = at::arange(key_length, index_options).unsqueeze(0);
  at::Tensor bucket = t5_relative_position_bucket(memory_position - context_position, num_buckets, max_distance);
  at::Tensor values = relative_attention_bias->forward(bucket);  // [q, k, heads]
  return values.permute({2, 0, 1}).unsqueeze(0);
}

at::Tensor T5AttentionImpl::forward(const at::Tensor& hidden_states, const at::Tensor& position_bias) {
  const int64_t batch = hidden_states.size(0), length = hidden_states.size(1);
  auto heads = [&](const at::Tensor& x) { return x.view({batch, length, num_heads, d_kv}).transpose(1, 2); };
  AttentionOptions attention;
  attention.mask = position_bias;
  attention.scale = 1.0;  // T5 does not scale scores: Mesh TensorFlow folded 1/sqrt(d_kv) into q's init
  at::Tensor out = diffuse::scaled_dot_product_attention(heads(q->forward(hidden_states)), heads(k->forward(hidden_states)),
                                                heads(v->forward(hidden_states)), attention);
  return o->forward(out.transpose(1, 2).reshape({batch, length, num_heads * d_kv}));
}

T5LayerSelfAttentionImpl::T5LayerSelfAttentionImpl(const T5Config& config, bool has_relative_attention_bias,
                                                   const at::TensorOptions& options) {
  SelfAttention = register_module("SelfAttention", T5Attention(config, has_relative_attention_bias, options));
  layer_norm = register_module("layer_norm", RMSNorm(config.d_model, config.layer_norm_epsilon, true, options));
}

at::Tensor T5LayerSelfAttentionImpl::forward(const at::Tensor& hidden_states, const at::Tensor& position_bias) {
  return hidden_states + SelfAttention->forward(layer_norm->forward(hidden_states), position_bias);
}

T5DenseActDenseImpl::T5DenseActDenseImpl(const T5Config& config, const at::TensorOptions& options)
    : is_gated(config.is_gated_act), dense_act_fn(config.dense_act_fn) {
  if (is_gated) {
    wi_0 = register_module("wi_0", Linear(config.d_model, config.d_ff, false, options));
    wi_1 = register_module("wi_1", Linear(config.d_model, config.d_ff, false, options));
  } else {
    wi = register_module("wi", Linear(config.d_model, config.d_ff, false, options));
  }
  wo = register_module("wo", Linear(config.d_ff, config.d_model, false, options));
  activation(at::zeros({1}), dense_act_fn);  // an unknown name fails at construction, not mid-inference
}

at::Tensor T5DenseActDenseImpl::forward(const at::Tensor& hidden_states) {
  at::Tensor hidden = is_gated ? activation(wi_0->forward(hidden_states), dense_act_fn) * wi_1->forward(hidden_states)
                               : activation(wi->forward(hidden_states), dense_act_fn);
  // `wo` may be kept in float32 under float16 (its outputs overflow half precision in T5-v1.1).
  if (hidden.scalar_type() != wo->weight.scalar_type()) hidden = hidden.to(wo->weight.scalar_type());
  return wo->forward(hidden);
}

T5LayerFFImpl::T5LayerFFImpl(const T5Config& config, const at::TensorOptions& options) {
  DenseReluDense = register_module("DenseReluDense", T5DenseActDense(config, options));
  layer_norm = register_module("layer_norm", RMSNorm(config.d_model, config.layer_norm_epsilon, true, options));
}

at::Tensor T5LayerFFImpl::forward(const at::Tensor& hidden_states) {
  // With a float32 `wo` the sum promotes the residual stream to float32, as in transformers.
  return hidden_states + DenseReluDense->forward(layer_norm->forward(hidden_states));
}

T5BlockImpl::T5BlockImpl(const T5Config& config, bool has_relative_attention_bias, const at::TensorOptions& options) {
  layer = register_module("layer", torch::nn::ModuleList());
  layer->push_back(T5LayerSelfAttention(config, has_relative_attention_bias, options));
  layer->push_back(T5LayerFF(config, options));
}

at::Tensor T5BlockImpl::forward(const at::Tensor& hidden_states, const at::Tensor& position_bias) {
  at::Tensor hidden = clamp_float16(layer[0]->as<T5LayerSelfAttentionImpl>()->forward(hidden_states, position_bias));
  return clamp_float16(layer[1]->as<T5LayerFFImpl>()->forward(hidden));
}

T5StackImpl::T5StackImpl(const T5Config& config, const at::TensorOptions& options) {
  block = register_module("block", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_layers; ++i) block->push_back(T5Block(config, /*has_relative_attention_bias=*/i == 0, options));
  final_layer_norm = register_module("final_layer_norm", RMSNorm(config.d_model, config.layer_norm_epsilon, true, options));
}

at::Tensor T5StackImpl::forward(at::Tensor hidden_states) {
  if (block->size() > 0) {
    // One bias for the whole stack: only block 0 owns the table, every block adds the same values.
    // Computing it uses block 0's weights, so it runs as block 0 (a placement hook brings them in).
    const int64_t length = hidden_states.size(1);
    auto* first_attention = block[0]->as<T5BlockImpl>()->layer[0]->as<T5LayerSelfAttentionImpl>();
    const at::Tensor position_bias =
        run_unit(*block[0], [&] { return first_attention->SelfAttention->compute_bias(length, length); });
    for (const auto& b : *block) hidden_states = forward_unit(*b->as<T5BlockImpl>(), hidden_states, position_bias);
  }
  return forward_unit(*final_layer_norm, hidden_states);
}

T5EncoderModelImpl::T5EncoderModelImpl(const T5Config& config, const at::TensorOptions& options) : config_(config) {
  shared = register_module("shared", Embedding(config.vocab_size, config.d_model, options));
  encoder = register_module("encoder", T5Stack(config, options));
}

at::Tensor T5EncoderModelImpl::forward(const at::Tensor& input_ids) {
  if (input_ids.dim() != 2)
    throw Error("T5EncoderModel: input_ids must be [batch, tokens], got " + std::to_string(input_ids.dim()) +
                " dimensions");
  const at::Tensor ids = input_ids.to(shared->weight.device(), at::kLong);
  return encoder->forward(forward_unit(*shared, ids));
}

WeightLoadOptions T5EncoderModelImpl::weight_load_options(c10::ScalarType dtype) {
  WeightLoadOptions options{.dtype = dtype};
  // The encoder's embed_tokens is tied to `shared`; some checkpoints store both.
  options.tied_aliases = {{"encoder.embed_tokens.weight", "shared.weight"}};
  if (dtype == c10::kHalf) options.keep_in_float32 = {"wo"};  // transformers' T5 _keep_in_fp32_modules
  return options;
}

T5EncoderModel load_t5_encoder(const std::filesystem::path& folder, c10::ScalarType dtype, c10::Device device) {
  WeightLoadOptions options = T5EncoderModelImpl::weight_load_options(dtype);
  options.device = device;
  return load_pretrained<T5EncoderModel, T5Config>(folder, options);
}

std::vector<std::string> T5EncoderModelImpl::unit_containers() const { return {"", "encoder", "encoder.block"}; }

uint64_t T5EncoderModelImpl::activation_estimate() const {
  // 512 tokens: the gated feed-forward's two d_ff rows and the hidden states, plus the float32
  // position bias.
  const uint64_t tokens = 512;
  const auto& c = config_;
  return tokens * static_cast<uint64_t>(3 * c.d_ff + 4 * c.d_model) * weight_element_bytes(*this) +
         static_cast<uint64_t>(c.num_heads) * tokens * tokens * 4;
}

}  // namespace diffuse
