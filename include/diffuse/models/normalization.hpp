#pragma once
// Adaptive layer norms of the DiT family (diffusers' normalization.py): the norm itself has no
// affine parameters; a linear projection of the conditioning vector `emb` ([batch, dim], the
// timestep/guidance/text embedding) gives a per-sample shift and scale, and for the "zero" variants
// gates that the block applies to its residual branches (adaLN-Zero, Peebles & Xie, "Scalable
// Diffusion Models with Transformers").

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "diffuse/models/layers.hpp"

namespace diffuse {

// x * (1 + scale) + shift, with [batch, dim] modulation broadcast over the sequence of x [batch, seq, dim].
at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale);

// modulate(norm(x), shift, scale) for a norm without parameters of its own. With one sample the
// modulation is per channel, so it becomes layer_norm's own weight (1 + scale) and bias (shift): one
// kernel instead of three, one rounding instead of three. Otherwise the same as the composition.
at::Tensor modulated_layer_norm(LayerNormImpl& norm, const at::Tensor& x, const at::Tensor& shift,
                                const at::Tensor& scale);

// diffusers' AdaLayerNormZero: six modulations from one projection `linear` (dim -> 6 dim).
// Returns the modulated attention input and what the block needs for the rest of its residuals.
struct AdaLayerNormZeroOutput {
  at::Tensor hidden_states;  // norm(x) * (1 + scale_msa) + shift_msa
  at::Tensor gate_msa, shift_mlp, scale_mlp, gate_mlp;  // [batch, dim] each
};

class AdaLayerNormZeroImpl : public torch::nn::Module {
 public:
  AdaLayerNormZeroImpl(int64_t dim, const at::TensorOptions& options);
  AdaLayerNormZeroOutput forward(const at::Tensor& x, const at::Tensor& emb);
  Linear linear{nullptr};
  LayerNorm norm{nullptr};  // eps 1e-6, no parameters
};
TORCH_MODULE(AdaLayerNormZero);

// diffusers' AdaLayerNormZeroSingle: shift, scale and one gate (dim -> 3 dim).
struct AdaLayerNormZeroSingleOutput {
  at::Tensor hidden_states;
  at::Tensor gate;  // [batch, dim]
};

class AdaLayerNormZeroSingleImpl : public torch::nn::Module {
 public:
  AdaLayerNormZeroSingleImpl(int64_t dim, const at::TensorOptions& options);
  AdaLayerNormZeroSingleOutput forward(const at::Tensor& x, const at::Tensor& emb);
  Linear linear{nullptr};
  LayerNorm norm{nullptr};
};
TORCH_MODULE(AdaLayerNormZeroSingle);

// diffusers' AdaLayerNormContinuous (layer_norm type), the norm before a DiT's output projection.
// Note the order: the projection gives (scale, shift), not (shift, scale).
class AdaLayerNormContinuousImpl : public torch::nn::Module {
 public:
  AdaLayerNormContinuousImpl(int64_t dim, int64_t conditioning_dim, bool elementwise_affine, double eps,
                             const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& conditioning);
  Linear linear{nullptr};
  LayerNorm norm{nullptr};
};
TORCH_MODULE(AdaLayerNormContinuous);

}  // namespace diffuse
