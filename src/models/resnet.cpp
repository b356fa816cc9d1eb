#include "diffuse/models/resnet.hpp"

#include "diffuse/error.hpp"

namespace diffuse {

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& block, const at::TensorOptions& options)
    : options_(block) {
  ResnetBlock2DOptions& o = options_;
  if (o.out_channels == 0) o.out_channels = o.in_channels;
  if (o.groups_out == 0) o.groups_out = o.groups;
  if (o.time_embedding_norm != "default")
    throw Error("ResnetBlock2D: time_embedding_norm '" + o.time_embedding_norm +
                "' is not supported (only \"default\")");
  if (o.output_scale_factor == 0.0) throw Error("ResnetBlock2D: output_scale_factor must not be 0");
  activation(at::zeros({1}), o.act_fn);  // an unknown name fails here, naming it, not at the first forward
  norm1 = register_module("norm1", GroupNorm(o.groups, o.in_channels, o.eps, /*affine=*/true, options));
  conv1 = register_module("conv1", Conv2d(o.in_channels, o.out_channels, 3, 1, 1, true, options));
  if (o.temb_channels > 0)
    time_emb_proj = register_module("time_emb_proj", Linear(o.temb_channels, o.out_channels, true, options));
  norm2 = register_module("norm2", GroupNorm(o.groups_out, o.out_channels, o.eps, /*affine=*/true, options));
  conv2 = register_module("conv2", Conv2d(o.out_channels, o.out_channels, 3, 1, 1, true, options));
  if (o.in_channels != o.out_channels)
    conv_shortcut = register_module("conv_shortcut", Conv2d(o.in_channels, o.out_channels, 1, 1, 0, true, options));
}

at::Tensor ResnetBlock2DImpl::forward(const at::Tensor& input, const at::Tensor& temb) {
  const std::string& act = options_.act_fn;
  if (temb.defined() != !time_emb_proj.is_empty())
    throw Error(time_emb_proj.is_empty() ? "ResnetBlock2D: a time embedding was given to a block without one"
                                         : "ResnetBlock2D: this block needs a time embedding (temb)");
  at::Tensor hidden = conv1(norm1->forward_then(input, act));
  // The time embedding [B, out] is added at every position before norm2 (inside its kernel on CUDA).
  const at::Tensor time = temb.defined() ? time_emb_proj(activation(temb, act)) : at::Tensor();
  hidden = conv2(norm2->forward_then(hidden, act, time));  // dropout is the identity at inference
  const at::Tensor shortcut = conv_shortcut ? conv_shortcut(input) : input;
  at::Tensor output = shortcut + hidden;
  // diffusers divides even by 1; skipping that is exact.
  return options_.output_scale_factor == 1.0 ? output : output / options_.output_scale_factor;
}

}  // namespace diffuse
