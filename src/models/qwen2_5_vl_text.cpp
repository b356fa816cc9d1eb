#include "diffuse/models/qwen2_5_vl_text.hpp"

#include <c10/util/Exception.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "diffuse/error.hpp"
#include "diffuse/models/attention.hpp"

namespace diffuse {
namespace {

std::string shape_text(c10::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// [x1, x2] -> [-x2, x1] over the last dimension (the rotary embedding's pairing of channel i with
// channel i + head_dim/2, as transformers' rotate_half).
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

#if TORCH_VERSION_MAJOR >= 2
// The fused kernels. automatic and native leave the choice to PyTorch's scaled_dot_product_attention;
// a kernel named explicitly runs as such where there is no padding (plain causal attention). With
// padding, the mask goes through scaled_dot_product_attention, which picks a kernel that takes one.
at::Tensor fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& keep,
                           double scale, AttentionBackend requested, AttentionBackend backend) {
  if (keep.defined()) {
    if (requested == AttentionBackend::flash)
      throw Error(
          "attention backend 'flash' cannot run here: it takes no attention mask, and this batch has padding "
          "(use auto, native, efficient, cudnn or math)");
    return at::scaled_dot_product_attention(q, k, v, keep, /*dropout_p=*/0.0, /*is_causal=*/false, scale);
  }
  if (requested == AttentionBackend::automatic || backend == AttentionBackend::native)
    return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/std::nullopt, 0.0, /*is_causal=*/true, scale);
  switch (backend) {
    case AttentionBackend::flash:
      return std::get<0>(at::_scaled_dot_product_flash_attention(q, k, v, /*dropout_p=*/0.0, /*is_causal=*/true,
                                                                 /*return_debug_mask=*/false, scale));
    case AttentionBackend::cudnn:
      return std::get<0>(at::_scaled_dot_product_cudnn_attention(q, k, v, /*attn_bias=*/std::nullopt,
                                                                 /*compute_log_sumexp=*/false, 0.0,
                                                                 /*is_causal=*/true, false, scale));
    default:  // efficient
      return std::get<0>(at::_scaled_dot_product_efficient_attention(q, k, v, /*attn_bias=*/std::nullopt,
                                                                     /*compute_log_sumexp=*/false, 0.0,
                                                                     /*is_causal=*/true, scale));
  }
}
#endif

// Causal self-attention, q/k/v [batch, heads, tokens, head_dim] (k/v already repeated to the query
// heads). `keep` [batch, 1, tokens, tokens] bool, or undefined for plain causal attention.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& keep,
                            double scale, AttentionBackend requested) {
  const AttentionBackend backend = resolve_attention_backend(requested, q);
  at::Tensor out;
  if (backend == AttentionBackend::math) {
    AttentionOptions options;
    options.scale = scale;
    if (keep.defined())
      options.mask = keep;
    else
      options.is_causal = true;
    out = math_attention(q, k, v, options);
  } else {
#if TORCH_VERSION_MAJOR >= 2
    try {
      out = fused_attention(q, k, v, keep, scale, requested, backend);
    } catch (const c10::Error& e) {
      throw Error("attention backend '" + attention_backend_name(backend) +
                  "' cannot run here: " + e.what_without_backtrace());
    }
#endif
  }
  // A query with no key to attend to (a padding token before a row's first real token) gets zeros, as
  // PyTorch's scaled_dot_product_attention gives it, not the NaN of a softmax over nothing: that NaN
  // would reach the real tokens through the next layer's values, even with a weight of 0.
  if (keep.defined()) out = out.masked_fill(keep.any(-1, /*keepdim=*/true).logical_not(), 0);
  return out;
}

}  // namespace

at::Tensor qwen2_5_vl_text_positions(const at::Tensor& attention_mask) {
  const at::Tensor valid = attention_mask.ne(0).to(at::kLong);
  const at::Tensor positions = (valid.cumsum(-1) - 1).masked_fill(valid.eq(0), 1);
  return positions.unsqueeze(0).expand({3, positions.size(0), positions.size(1)});
}

std::pair<at::Tensor, at::Tensor> qwen2_5_vl_rotary_cos_sin(const at::Tensor& positions, int64_t head_dim,
                                                            double theta, const std::vector<int64_t>& mrope_section,
                                                            c10::ScalarType dtype) {
  if (positions.dim() != 3 || positions.size(0) != 3)
    throw Error("M-RoPE positions must be [3, batch, tokens], got " + shape_text(positions.sizes()));
  // transformers' default rope: inv_freq = 1 / theta^(arange(0, head_dim, 2) / head_dim), in float32; the
  // angles as products in float32 (its matmul over a dimension of one is the same product).
  const at::TensorOptions options = positions.options().dtype(at::kFloat);
  const at::Tensor exponent = at::arange(0, head_dim, 2, positions.options().dtype(at::kLong)).to(at::kFloat) /
                              static_cast<double>(head_dim);
  const at::Tensor inv_freq = 1.0 / at::pow(theta, exponent);
  const at::Tensor freqs = positions.to(options).unsqueeze(-1) * inv_freq;  // [3, batch, tokens, head_dim / 2]
  const at::Tensor angles = at::cat({freqs, freqs}, -1);                    // [3, batch, tokens, head_dim]
  const at::Tensor cos = angles.cos(), sin = angles.sin();
  // Channel chunks of mrope_section (repeated for the second half) take axes 0, 1, 2, 0, 1, 2 in turn.
  std::vector<at::Tensor> cos_parts, sin_parts;
  int64_t start = 0, chunk = 0;
  for (int repeat = 0; repeat < 2; ++repeat) {
    for (int64_t width : mrope_section) {
      const int64_t axis = chunk++ % 3;
      cos_parts.push_back(cos[axis].narrow(-1, start, width));
      sin_parts.push_back(sin[axis].narrow(-1, start, width));
      start += width;
    }
  }
  if (start != head_dim)
    throw Error("mrope_section covers " + std::to_string(start / 2) + " channel pairs, not head_dim / 2 = " +
                std::to_string(head_dim / 2));
  return {at::cat(cos_parts, -1).to(dtype), at::cat(sin_parts, -1).to(dtype)};
}

Qwen2_5_VLAttentionImpl::Qwen2_5_VLAttentionImpl(const Qwen2_5_VLTextConfig& config, const at::TensorOptions& options)
    : num_heads(config.num_attention_heads),
      num_key_value_heads(config.num_key_value_heads),
      head_dim(config.head_dim()) {
  const int64_t hidden = config.hidden_size;
  q_proj = register_module("q_proj", Linear(hidden, num_heads * head_dim, true, options));
  k_proj = register_module("k_proj", Linear(hidden, num_key_value_heads * head_dim, true, options));
  v_proj = register_module("v_proj", Linear(hidden, num_key_value_heads * head_dim, true, options));
  o_proj = register_module("o_proj", Linear(num_heads * head_dim, hidden, false, options));
}

at::Tensor Qwen2_5_VLAttentionImpl::forward(const at::Tensor& hidden_states, const at::Tensor& cos,
                                            const at::Tensor& sin, const at::Tensor& keep) {
  const int64_t batch = hidden_states.size(0), length = hidden_states.size(1);
  // [B, L, heads * head_dim] -> [B, heads, L, head_dim]
  auto heads = [&](const at::Tensor& x) { return x.view({batch, length, -1, head_dim}).transpose(1, 2); };
  at::Tensor q = heads(q_proj->forward(hidden_states));
  at::Tensor k = heads(k_proj->forward(hidden_states));
  const at::Tensor v_heads = heads(v_proj->forward(hidden_states));
  const at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
  q = q * c + rotate_half(q) * s;
  k = k * c + rotate_half(k) * s;
  // Grouped-query attention: key/value head j serves query heads j * groups ... (j + 1) * groups - 1.
  const int64_t groups = num_heads / num_key_value_heads;
  auto repeat = [&](const at::Tensor& x) {
    if (groups == 1) return x;
    return x.unsqueeze(2).expand({batch, num_key_value_heads, groups, length, head_dim}).reshape(
        {batch, num_heads, length, head_dim});
  };
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const at::Tensor out = causal_attention(q, repeat(k), repeat(v_heads), keep, scale, backend);
  return o_proj->forward(out.transpose(1, 2).reshape({batch, length, num_heads * head_dim}));
}

Qwen2_5_VLMLPImpl::Qwen2_5_VLMLPImpl(const Qwen2_5_VLTextConfig& config, const at::TensorOptions& options)
    : hidden_act(config.hidden_act) {
  gate_proj = register_module("gate_proj", Linear(config.hidden_size, config.intermediate_size, false, options));
  up_proj = register_module("up_proj", Linear(config.hidden_size, config.intermediate_size, false, options));
  down_proj = register_module("down_proj", Linear(config.intermediate_size, config.hidden_size, false, options));
}

at::Tensor Qwen2_5_VLMLPImpl::forward(const at::Tensor& hidden_states) {
  const at::Tensor gate = activation(gate_proj->forward(hidden_states), hidden_act);
  return down_proj->forward(gate * up_proj->forward(hidden_states));
}

Qwen2_5_VLDecoderLayerImpl::Qwen2_5_VLDecoderLayerImpl(const Qwen2_5_VLTextConfig& config,
                                                       const at::TensorOptions& options) {
  self_attn = register_module("self_attn", Qwen2_5_VLAttention(config, options));
  mlp = register_module("mlp", Qwen2_5_VLMLP(config, options));
  input_layernorm = register_module("input_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps, true, options));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps, true, options));
}

at::Tensor Qwen2_5_VLDecoderLayerImpl::forward(const at::Tensor& hidden_states, const at::Tensor& cos,
                                               const at::Tensor& sin, const at::Tensor& keep) {
  at::Tensor x = hidden_states + self_attn->forward(input_layernorm->forward(hidden_states), cos, sin, keep);
  return x + mlp->forward(post_attention_layernorm->forward(x));
}

Qwen2_5_VLTextStackImpl::Qwen2_5_VLTextStackImpl(const Qwen2_5_VLTextConfig& config, const at::TensorOptions& options) {
  embed_tokens = register_module("embed_tokens", Embedding(config.vocab_size, config.hidden_size, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layers->push_back(Qwen2_5_VLDecoderLayer(config, options));
  norm = register_module("norm", RMSNorm(config.hidden_size, config.rms_norm_eps, true, options));
}

WeightLoadOptions Qwen2_5_VLTextModelImpl::weight_load_options(c10::ScalarType dtype) {
  WeightLoadOptions options;
  options.dtype = dtype;
  // The vision tower under either naming (transformers 4.x and 5 save "visual.", the in-memory layout of
  // transformers >= 4.52 "model.visual.") and the LM head: the pipeline uses neither.
  options.ignored_prefixes = {"visual.", "model.visual.", "lm_head."};
  return options;
}

Qwen2_5_VLTextModelImpl::Qwen2_5_VLTextModelImpl(const Qwen2_5_VLTextConfig& config, const at::TensorOptions& options)
    : config_(config) {
  model = register_module("model", Qwen2_5_VLTextStack(config, options));
}

void Qwen2_5_VLTextModelImpl::set_attention_backend(AttentionBackend backend) {
  backend_ = backend;
  for (const auto& layer : *model->layers) layer->as<Qwen2_5_VLDecoderLayerImpl>()->self_attn->backend = backend;
}

at::Tensor Qwen2_5_VLTextModelImpl::forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) {
  const std::string what = "Qwen2.5-VL text encoder: ";
  if (!input_ids.defined() || input_ids.dim() != 2)
    throw Error(what + "input_ids must be [batch, tokens], got " +
                (input_ids.defined() ? shape_text(input_ids.sizes()) : std::string("no tensor")));
  if (c10::isFloatingType(input_ids.scalar_type()) || input_ids.scalar_type() == at::kBool)
    throw Error(what + "input_ids must be integer token ids, got " +
                std::string(c10::toString(input_ids.scalar_type())));
  if (input_ids.numel() > 0) {
    const int64_t low = input_ids.min().item<int64_t>(), high = input_ids.max().item<int64_t>();
    if (low < 0 || high >= config_.vocab_size)
      throw Error(what + "input id " + std::to_string(low < 0 ? low : high) +
                  " is outside the vocabulary (vocab_size " + std::to_string(config_.vocab_size) + ")");
  }
  if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes())
    throw Error(what + "attention_mask has shape " + shape_text(attention_mask.sizes()) + ", input_ids " +
                shape_text(input_ids.sizes()) + ": they must be the same [batch, tokens]");

  const at::Tensor ids = input_ids.to(model->embed_tokens->weight.device(), at::kLong);
  at::Tensor hidden = forward_unit(*model->embed_tokens, ids);
  const int64_t batch = ids.size(0), length = ids.size(1);

  const at::Tensor valid = attention_mask.defined() ? attention_mask.to(hidden.device()).ne(0)
                                                    : at::ones({batch, length}, hidden.options().dtype(at::kBool));
  const at::Tensor positions = qwen2_5_vl_text_positions(valid);
  const auto [cos, sin] = qwen2_5_vl_rotary_cos_sin(positions, config_.head_dim(), config_.rope_theta,
                                                    config_.mrope_section, hidden.scalar_type());
  // Causal and padding masks as one: query i attends to key j <= i when j is a real token. Without
  // padding it is left to the kernels' own causal mode.
  at::Tensor keep;
  if (!valid.all().item<bool>()) {
    const at::Tensor causal = at::ones({length, length}, valid.options()).tril();
    keep = causal.view({1, 1, length, length}).logical_and(valid.view({batch, 1, 1, length}));
  }
  for (const auto& layer : *model->layers)
    hidden = forward_unit(*layer->as<Qwen2_5_VLDecoderLayerImpl>(), hidden, cos, sin, keep);
  return forward_unit(*model->norm, hidden);
}

std::vector<std::string> Qwen2_5_VLTextModelImpl::unit_containers() const { return {"", "model", "model.layers"}; }

uint64_t Qwen2_5_VLTextModelImpl::activation_estimate() const {
  // QwenImagePipeline's longest prompt: max_sequence_length 1024 plus the 34 tokens of its template.
  const uint64_t tokens = static_cast<uint64_t>(std::min<int64_t>(config_.max_position_embeddings, 1024 + 34));
  const auto& c = config_;
  const uint64_t per_token =
      static_cast<uint64_t>(3 * c.intermediate_size + 6 * c.hidden_size) * weight_element_bytes(*this);
  // The math path's float32 scores, one [tokens, tokens] per head.
  const uint64_t scores = static_cast<uint64_t>(c.num_attention_heads) * tokens * tokens * 4;
  return tokens * per_token + scores;
}

}  // namespace diffuse
