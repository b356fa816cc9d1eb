#pragma once
// Several Linear layers that read the same input (attention's to_q, to_k and to_v) run as one matrix
// product when their weights lie end to end in one storage: one GEMM of N = 3 * inner fills the GPU
// far better than three of N = inner (on an H200, a 4608 x 3072 x 3072 product is ~3.3 waves of
// tiles; the last wave is mostly idle, three times over).
//
// The layers keep their own parameters (names, state dicts and loading are unchanged); fusing only
// re-lays them as views of one joint tensor. Anything that later replaces a parameter's data
// (loading, offload, a device map: all use set_data) breaks the adjacency, and the callers then fall
// back to one product per layer, which gives the same values.

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "diffuse/models/layers.hpp"

namespace diffuse {

// The layers' weights as one [sum of out_features, in_features] tensor (and biases as one vector,
// undefined when the layers have none), when they are views of one storage laid end to end in this
// order; nullopt otherwise. Cheap: pointer arithmetic, no copies.
struct JointLinear {
  at::Tensor weight, bias;
};
std::optional<JointLinear> joint_linear(const std::vector<const LinearImpl*>& layers);

// Re-lays the layers' weights and biases end to end in one new storage each and points the
// parameters at views of it (set_data). Returns false, changing nothing, when they cannot share one
// (different in_features, dtypes or devices, some with bias and some without). Already joint: no copy.
bool fuse_linears(const std::vector<LinearImpl*>& layers);

// Each layer's output for `x` [..., in_features]: one product over the joint weight when the layers
// are joint (the results are column slices of its output, so not contiguous), else one per layer.
std::vector<at::Tensor> joint_linear_forward(const std::vector<LinearImpl*>& layers, const at::Tensor& x);

}  // namespace diffuse
