#include "diffuse/models/embeddings.hpp"

#include <cmath>
#include <string>

#include "diffuse/error.hpp"

namespace diffuse {

at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double downscale_freq_shift, double scale, double max_period) {
  if (timesteps.dim() != 1)
    throw Error("timestep_embedding: timesteps must be 1-D [batch], got " + std::to_string(timesteps.dim()) +
                " dimensions");
  const int64_t half = dim / 2;
  // Same operations in the same order and precision as diffusers, so the sinusoids agree to the bit.
  at::Tensor exponent = at::arange(0, half, timesteps.options().dtype(at::kFloat)) * (-std::log(max_period));
  exponent = exponent / (static_cast<double>(half) - downscale_freq_shift);
  at::Tensor angles = timesteps.unsqueeze(1).to(at::kFloat) * at::exp(exponent).unsqueeze(0);
  angles = angles * scale;
  at::Tensor embedding = flip_sin_to_cos ? at::cat({at::cos(angles), at::sin(angles)}, -1)
                                         : at::cat({at::sin(angles), at::cos(angles)}, -1);
  if (dim % 2 == 1) embedding = at::constant_pad_nd(embedding, {0, 1});
  return embedding;
}

TimestepsImpl::TimestepsImpl(int64_t num_channels_, bool flip_sin_to_cos_, double downscale_freq_shift_,
                             double scale_)
    : num_channels(num_channels_),
      flip_sin_to_cos(flip_sin_to_cos_),
      downscale_freq_shift(downscale_freq_shift_),
      scale(scale_) {}

at::Tensor TimestepsImpl::forward(const at::Tensor& timesteps) {
  return timestep_embedding(timesteps, num_channels, flip_sin_to_cos, downscale_freq_shift, scale);
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim,
                                             const at::TensorOptions& options, std::string act_fn)
    : act_fn_(std::move(act_fn)) {
  activation(at::zeros({1}), act_fn_);  // an unknown name fails here
  linear_1 = register_module("linear_1", Linear(in_channels, time_embed_dim, /*bias=*/true, options));
  linear_2 = register_module("linear_2", Linear(time_embed_dim, time_embed_dim, /*bias=*/true, options));
}

at::Tensor TimestepEmbeddingImpl::forward(const at::Tensor& sample) {
  return linear_2(activation(linear_1(sample), act_fn_));
}

PixArtAlphaTextProjectionImpl::PixArtAlphaTextProjectionImpl(int64_t in_features, int64_t hidden_size,
                                                             const at::TensorOptions& options) {
  linear_1 = register_module("linear_1", Linear(in_features, hidden_size, /*bias=*/true, options));
  linear_2 = register_module("linear_2", Linear(hidden_size, hidden_size, /*bias=*/true, options));
}

at::Tensor PixArtAlphaTextProjectionImpl::forward(const at::Tensor& caption) {
  return linear_2(at::silu(linear_1(caption)));
}

CombinedTimestepTextProjEmbeddingsImpl::CombinedTimestepTextProjEmbeddingsImpl(int64_t embedding_dim,
                                                                               int64_t pooled_projection_dim,
                                                                               bool guidance_embeds,
                                                                               const at::TensorOptions& options) {
  timestep_embedder =
      register_module("timestep_embedder", TimestepEmbedding(kTimestepChannels, embedding_dim, options));
  if (guidance_embeds)
    guidance_embedder =
        register_module("guidance_embedder", TimestepEmbedding(kTimestepChannels, embedding_dim, options));
  text_embedder =
      register_module("text_embedder", PixArtAlphaTextProjection(pooled_projection_dim, embedding_dim, options));
}

at::Tensor CombinedTimestepTextProjEmbeddingsImpl::forward(const at::Tensor& timestep, const at::Tensor& guidance,
                                                           const at::Tensor& pooled_projection) {
  if (has_guidance() && !guidance.defined())
    throw Error("time_text_embed: this model embeds guidance (guidance_embeds = true) but no guidance was given");
  if (!has_guidance() && guidance.defined())
    throw Error("time_text_embed: guidance was given but this model has no guidance embedder "
                "(guidance_embeds = false)");
  const auto dtype = pooled_projection.scalar_type();
  auto sinusoids = [&](const at::Tensor& t) {
    return timestep_embedding(t, kTimestepChannels, /*flip_sin_to_cos=*/true, /*downscale_freq_shift=*/0).to(dtype);
  };
  at::Tensor conditioning = timestep_embedder(sinusoids(timestep));
  if (has_guidance()) conditioning = conditioning + guidance_embedder(sinusoids(guidance));
  return conditioning + text_embedder(pooled_projection);
}

RotaryEmbedding rotary_embedding_1d(int64_t dim, const at::Tensor& pos, double theta) {
  if (dim % 2 != 0) throw Error("rotary embedding: dimension " + std::to_string(dim) + " is odd");
  const auto float64 = pos.options().dtype(at::kDouble);
  at::Tensor inv_freq = 1.0 / at::pow(theta, at::arange(0, dim, 2, float64) / static_cast<double>(dim));
  // Positions go through float32 first (diffusers' ids.float()), then the outer product in float64.
  at::Tensor angles = at::outer(pos.to(at::kFloat).to(at::kDouble), inv_freq);  // [seq, dim/2]
  return {at::cos(angles).repeat_interleave(2, /*dim=*/1).to(at::kFloat),
          at::sin(angles).repeat_interleave(2, /*dim=*/1).to(at::kFloat)};
}

RotaryEmbedding flux_pos_embed(const at::Tensor& ids, const std::vector<int64_t>& axes_dim, double theta) {
  if (ids.dim() != 2 || ids.size(1) != static_cast<int64_t>(axes_dim.size()))
    throw Error("rotary embedding: ids must be [seq, " + std::to_string(axes_dim.size()) + "], got " +
                std::to_string(ids.dim()) + " dimensions" +
                (ids.dim() == 2 ? " with " + std::to_string(ids.size(1)) + " axes" : std::string()));
  std::vector<at::Tensor> cos, sin;
  for (size_t axis = 0; axis < axes_dim.size(); ++axis) {
    RotaryEmbedding one = rotary_embedding_1d(axes_dim[axis], ids.select(1, static_cast<int64_t>(axis)), theta);
    cos.push_back(one.cos);
    sin.push_back(one.sin);
  }
  at::Tensor all_cos = at::cat(cos, -1), all_sin = at::cat(sin, -1);
  return {all_cos, all_sin, rotary_phasor(all_cos, all_sin)};
}

at::Tensor rotary_phasor(const at::Tensor& cos, const at::Tensor& sin) {
  using at::indexing::Slice;
  const at::Tensor pairs = at::stack({cos.index({Slice(), Slice(0, at::indexing::None, 2)}),
                                      sin.index({Slice(), Slice(0, at::indexing::None, 2)})},
                                     -1);
  return at::view_as_complex(pairs.to(at::kFloat).contiguous());
}

at::Tensor apply_rotary_emb(const at::Tensor& x, const RotaryEmbedding& rotary) {
  // Channels (2i, 2i+1) are the real and imaginary parts of one complex number, turned by e^(i angle).
  const at::Tensor phasor = rotary.phasor.defined() ? rotary.phasor : rotary_phasor(rotary.cos, rotary.sin);
  std::vector<int64_t> pairs = x.sizes().vec();
  pairs.back() /= 2;
  pairs.push_back(2);
  const at::Tensor turned = at::view_as_complex(x.to(at::kFloat).reshape(pairs)) * phasor;
  return at::view_as_real(turned).flatten(-2).to(x.scalar_type());
}

}  // namespace diffuse
