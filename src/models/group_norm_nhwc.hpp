#pragma once
// GroupNorm (and GroupNorm + SiLU) on channels-last CUDA activations in one pass of our own kernels
// (src/kernels/group_norm_nhwc.cu). PyTorch's CUDA group_norm copies a channels-last input to NCHW
// and returns NCHW, which would undo a channels-last UNet at every norm; elsewhere GroupNormImpl uses
// at::group_norm.

#include <ATen/core/Tensor.h>

namespace diffuse {

class GroupNormImpl;

// Whether the kernels were built (CUDA builds) and take activations like `x`: on CUDA, bfloat16 or
// float16. Models keep their activations channels-last on such devices only when this holds.
bool channels_last_group_norm_available(const at::Tensor& x);

// `x` channels-last where the kernels take it (the above), else `x` itself: how a model enters its
// channels-last maps.
at::Tensor channels_last_where_fused(const at::Tensor& x);

// Whether `norm` can run `x` (and the optional `x_bias`) through the kernels: the above, x 4-D,
// channels-last contiguous and 16-byte aligned, an affine norm in x's dtype, channels per group even
// (kernels/group_norm_nhwc.hpp says how many channels fit), x_bias [batch, channels] in x's dtype and
// device.
bool fused_group_norm_available(const at::Tensor& x, const GroupNormImpl& norm, const at::Tensor& x_bias = {});

// norm(x + x_bias[:, :, None, None]), then SiLU when `silu`; channels-last in and out. `x_bias`
// (optional) is [batch, channels] in x's dtype, added with the rounding of a separate add. Throws
// diffuse::Error where not available.
at::Tensor fused_group_norm(const at::Tensor& x, const GroupNormImpl& norm, bool silu, const at::Tensor& x_bias = {});

}  // namespace diffuse
