#include "diffuse/models/normalization.hpp"

namespace diffuse {
namespace {

// The DiT norms are fixed at eps 1e-6 and carry no affine parameters of their own.
constexpr double kAdaNormEps = 1e-6;

}  // namespace

at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}

at::Tensor modulated_layer_norm(LayerNormImpl& norm, const at::Tensor& x, const at::Tensor& shift,
                                const at::Tensor& scale) {
  if (x.size(0) != 1 || norm.weight.defined() || norm.bias.defined()) return modulate(norm.forward(x), shift, scale);
  return at::layer_norm(x, {norm.dim}, 1 + scale[0], shift[0], norm.eps);
}

AdaLayerNormZeroImpl::AdaLayerNormZeroImpl(int64_t dim, const at::TensorOptions& options) {
  linear = register_module("linear", Linear(dim, 6 * dim, /*bias=*/true, options));
  norm = register_module("norm", LayerNorm(dim, kAdaNormEps, /*elementwise_affine=*/false, false, options));
}

AdaLayerNormZeroOutput AdaLayerNormZeroImpl::forward(const at::Tensor& x, const at::Tensor& emb) {
  auto chunks = linear(at::silu(emb)).chunk(6, /*dim=*/1);
  // diffusers' order: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
  return {modulated_layer_norm(*norm, x, chunks[0], chunks[1]), chunks[2], chunks[3], chunks[4], chunks[5]};
}

AdaLayerNormZeroSingleImpl::AdaLayerNormZeroSingleImpl(int64_t dim, const at::TensorOptions& options) {
  linear = register_module("linear", Linear(dim, 3 * dim, /*bias=*/true, options));
  norm = register_module("norm", LayerNorm(dim, kAdaNormEps, /*elementwise_affine=*/false, false, options));
}

AdaLayerNormZeroSingleOutput AdaLayerNormZeroSingleImpl::forward(const at::Tensor& x, const at::Tensor& emb) {
  auto chunks = linear(at::silu(emb)).chunk(3, /*dim=*/1);  // shift, scale, gate
  return {modulated_layer_norm(*norm, x, chunks[0], chunks[1]), chunks[2]};
}

AdaLayerNormContinuousImpl::AdaLayerNormContinuousImpl(int64_t dim, int64_t conditioning_dim,
                                                       bool elementwise_affine, double eps,
                                                       const at::TensorOptions& options) {
  linear = register_module("linear", Linear(conditioning_dim, 2 * dim, /*bias=*/true, options));
  norm = register_module("norm", LayerNorm(dim, eps, elementwise_affine, /*bias=*/true, options));
}

at::Tensor AdaLayerNormContinuousImpl::forward(const at::Tensor& x, const at::Tensor& conditioning) {
  // The cast matters where the conditioning was kept in float32 while x is in half precision.
  auto chunks = linear(at::silu(conditioning).to(x.scalar_type())).chunk(2, /*dim=*/1);
  return modulated_layer_norm(*norm, x, /*shift=*/chunks[1], /*scale=*/chunks[0]);
}

}  // namespace diffuse
