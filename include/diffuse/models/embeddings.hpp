#pragma once
// The conditioning and position embeddings of FLUX.1 and SD's UNet (diffusers' embeddings.py):
// sinusoidal timestep features and their MLPs, the pooled text projection, and the rotary position
// embedding over multi-axis ids (FluxPosEmbed) with the function that applies it to queries and keys.

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "diffuse/models/layers.hpp"

namespace diffuse {

// diffusers' get_timestep_embedding: [N] (fractional) timesteps -> [N, dim] float32 sinusoids with
// frequencies exp(-log(max_period) * i / (dim/2 - downscale_freq_shift)); [sin, cos], or [cos, sin]
// with flip_sin_to_cos. Computed in float32 whatever the timesteps' dtype, as diffusers does.
at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double downscale_freq_shift, double scale = 1.0, double max_period = 10000.0);

// diffusers' Timesteps: timestep_embedding as a module (no parameters), the UNet's `time_proj`.
// forward: [N] timesteps -> [N, num_channels] float32.
class TimestepsImpl : public torch::nn::Module {
 public:
  TimestepsImpl(int64_t num_channels, bool flip_sin_to_cos, double downscale_freq_shift, double scale = 1.0);
  at::Tensor forward(const at::Tensor& timesteps);
  int64_t num_channels;
  bool flip_sin_to_cos;
  double downscale_freq_shift, scale;
};
TORCH_MODULE(Timesteps);

// diffusers' TimestepEmbedding without its optional parts: linear_1, the activation, linear_2.
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  // act_fn: a name activation() knows ("silu" in every model here).
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, const at::TensorOptions& options,
                        std::string act_fn = "silu");
  at::Tensor forward(const at::Tensor& sample);
  Linear linear_1{nullptr}, linear_2{nullptr};

 private:
  std::string act_fn_;
};
TORCH_MODULE(TimestepEmbedding);

// diffusers' PixArtAlphaTextProjection with act_fn "silu": linear_1, SiLU, linear_2.
class PixArtAlphaTextProjectionImpl : public torch::nn::Module {
 public:
  PixArtAlphaTextProjectionImpl(int64_t in_features, int64_t hidden_size, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& caption);
  Linear linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(PixArtAlphaTextProjection);

// The conditioning vector `temb` of FLUX.1: timestep_embedder(sinusoids(t)) [+ guidance_embedder(
// sinusoids(g))] + text_embedder(pooled). With `guidance_embeds` it is diffusers'
// CombinedTimestepGuidanceTextProjEmbeddings (FLUX.1-dev), without it CombinedTimestepTextProjEmbeddings
// (FLUX.1-schnell), which has no guidance_embedder child.
class CombinedTimestepTextProjEmbeddingsImpl : public torch::nn::Module {
 public:
  CombinedTimestepTextProjEmbeddingsImpl(int64_t embedding_dim, int64_t pooled_projection_dim, bool guidance_embeds,
                                         const at::TensorOptions& options);
  // timestep and guidance: [batch], already scaled to [0, 1000); guidance must be defined exactly when
  // the module has a guidance embedder (diffuse::Error otherwise). pooled_projection: [batch, pooled_dim].
  at::Tensor forward(const at::Tensor& timestep, const at::Tensor& guidance, const at::Tensor& pooled_projection);
  bool has_guidance() const { return !guidance_embedder.is_empty(); }

  static constexpr int64_t kTimestepChannels = 256;
  TimestepEmbedding timestep_embedder{nullptr};
  TimestepEmbedding guidance_embedder{nullptr};  // empty without guidance_embeds
  PixArtAlphaTextProjection text_embedder{nullptr};
};
TORCH_MODULE(CombinedTimestepTextProjEmbeddings);

// A rotary embedding in "real" form: cos and sin, each [seq, head_dim], float32, with every frequency
// repeated twice in a row (pairs of adjacent channels rotate together). Row i belongs to token i of the
// sequence the attention sees, so a shard of the sequence takes the same rows.
struct RotaryEmbedding {
  at::Tensor cos;
  at::Tensor sin;
  // The same angles as complex64 e^(i angle), [seq, head_dim / 2], one per channel pair: applying it is
  // one complex product (flux_pos_embed fills it; apply_rotary_emb makes it from cos/sin otherwise).
  at::Tensor phasor;
};

// cos/sin [seq, head_dim] (each frequency twice) -> e^(i angle) [seq, head_dim / 2] complex64.
at::Tensor rotary_phasor(const at::Tensor& cos, const at::Tensor& sin);

// diffusers' get_1d_rotary_pos_embed(use_real=True, repeat_interleave_real=True) for positions
// `pos` [seq]: angles pos * theta^(-2i/dim) in float64 (FLUX's freqs_dtype), then cos/sin cast to float32.
RotaryEmbedding rotary_embedding_1d(int64_t dim, const at::Tensor& pos, double theta = 10000.0);

// diffusers' FluxPosEmbed: ids [seq, n_axes] (text ids and image ids, concatenated in attention's order)
// -> one 1-D rotary embedding per axis, of axes_dim[axis] channels each, concatenated along channels.
// Computed on ids' device (float64 there; the caller picks a device that has it).
RotaryEmbedding flux_pos_embed(const at::Tensor& ids, const std::vector<int64_t>& axes_dim, double theta = 10000.0);

// diffusers' apply_rotary_emb(use_real=True, use_real_unbind_dim=-1): x [batch, heads, seq, head_dim]
// with channel pairs (2i, 2i+1) rotated as complex numbers by the embedding's angles. The products are
// taken in float32 (one complex64 product: the same sums as diffusers' real form) and the result
// returned in x's dtype.
at::Tensor apply_rotary_emb(const at::Tensor& x, const RotaryEmbedding& rotary);

}  // namespace diffuse
