#include "diffuse/models/qwenimage_blocks.hpp"

namespace diffuse {
namespace {

constexpr double kNormEps = 1e-6;

// nn.Sequential(SiLU, Linear(dim, 6 * dim)) under diffusers' indices: "0" holds nothing, "1" the linear.
torch::nn::ModuleList modulation(int64_t dim, const at::TensorOptions& options, Linear& linear) {
  linear = Linear(dim, 6 * dim, /*bias=*/true, options);
  torch::nn::ModuleList list;
  list->push_back(NoParameters());
  list->push_back(linear);
  return list;
}

}  // namespace

QwenTimestepProjEmbeddingsImpl::QwenTimestepProjEmbeddingsImpl(int64_t embedding_dim,
                                                               const at::TensorOptions& options) {
  timestep_embedder =
      register_module("timestep_embedder", TimestepEmbedding(kTimestepChannels, embedding_dim, options));
}

at::Tensor QwenTimestepProjEmbeddingsImpl::forward(const at::Tensor& timestep, c10::ScalarType dtype) {
  // diffusers' order of operations: (t * frequency) * 1000, in float32.
  const at::Tensor sinusoids = timestep_embedding(timestep, kTimestepChannels, /*flip_sin_to_cos=*/true,
                                                  /*downscale_freq_shift=*/0, /*scale=*/1000);
  return timestep_embedder(sinusoids.to(dtype));
}

QwenImageTransformerBlockImpl::QwenImageTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim,
                                                             const at::TensorOptions& options) {
  auto layer_norm = [&] { return LayerNorm(dim, kNormEps, /*elementwise_affine=*/false, /*bias=*/false, options); };
  img_mod = register_module("img_mod", modulation(dim, options, img_mod_linear_));
  img_norm1 = register_module("img_norm1", layer_norm());
  attn = register_module("attn", FluxAttention(dim, heads, head_dim, /*added_kv=*/true, options));
  img_norm2 = register_module("img_norm2", layer_norm());
  img_mlp = register_module("img_mlp", FeedForward(dim, dim, /*mult=*/4, options, "gelu-approximate"));
  txt_mod = register_module("txt_mod", modulation(dim, options, txt_mod_linear_));
  txt_norm1 = register_module("txt_norm1", layer_norm());
  txt_norm2 = register_module("txt_norm2", layer_norm());
  txt_mlp = register_module("txt_mlp", FeedForward(dim, dim, /*mult=*/4, options, "gelu-approximate"));
}

QwenImageBlockOutput QwenImageTransformerBlockImpl::forward(const at::Tensor& hidden_states,
                                                            const at::Tensor& encoder_hidden_states,
                                                            const at::Tensor& temb, const RotaryEmbedding& rotary) {
  // diffusers' order within each 6 * dim projection: (shift, scale, gate) before attention, then
  // (shift, scale, gate) before the MLP.
  const at::Tensor conditioning = at::silu(temb);
  const auto img = img_mod_linear_(conditioning).chunk(6, /*dim=*/1);
  const auto txt = txt_mod_linear_(conditioning).chunk(6, /*dim=*/1);

  const FluxAttentionOutput attention =
      attn(modulated_layer_norm(*img_norm1, hidden_states, img[0], img[1]),
           modulated_layer_norm(*txt_norm1, encoder_hidden_states, txt[0], txt[1]), rotary);

  // Gated residuals as one addcmul each (x + gate * branch).
  at::Tensor x = at::addcmul(hidden_states, img[2].unsqueeze(1), attention.hidden_states);
  at::Tensor c = at::addcmul(encoder_hidden_states, txt[2].unsqueeze(1), attention.encoder_hidden_states);
  x = at::addcmul(x, img[5].unsqueeze(1), img_mlp(modulated_layer_norm(*img_norm2, x, img[3], img[4])));
  c = at::addcmul(c, txt[5].unsqueeze(1), txt_mlp(modulated_layer_norm(*txt_norm2, c, txt[3], txt[4])));
  return {clip_float16(c), clip_float16(x)};
}

}  // namespace diffuse
