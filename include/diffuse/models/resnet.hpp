#pragma once
// diffusers' ResnetBlock2D (resnet.py), the residual block of every convolutional model here: the VAE
// uses it without a time embedding, the UNet with one. Children carry diffusers' names (norm1, conv1,
// time_emb_proj, norm2, conv2, conv_shortcut), so `down_blocks.0.resnets.1.conv2.weight` loads as is.
//
//   ResnetBlock2D block({.in_channels = 320, .out_channels = 640, .temb_channels = 1280, .eps = 1e-5}, options);
//   at::Tensor y = block(x, temb);   // x [B, 320, H, W], temb [B, 1280] -> [B, 640, H, W]

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "diffuse/models/layers.hpp"

namespace diffuse {

// diffusers' constructor arguments, with its defaults where it has them.
struct ResnetBlock2DOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;     // 0: in_channels
  int64_t temb_channels = 0;    // 0: no time embedding (diffusers' temb_channels=None), so no time_emb_proj
  int64_t groups = 32;          // of norm1
  int64_t groups_out = 0;       // of norm2; 0: groups
  double eps = 1e-6;            // of both group norms
  std::string act_fn = "silu";  // diffusers' non_linearity ("swish" is the same)
  // The sum (shortcut + residual) is divided by this (UNet's mid_block_scale_factor, resnet_out_scale_factor).
  double output_scale_factor = 1.0;
  // How the time embedding enters: "default" adds its projection between conv1 and norm2. ("scale_shift"
  // and the conditional norms are not implemented: diffuse::Error.)
  std::string time_embedding_norm = "default";
};

// x + conv2(act(norm2(conv1(act(norm1(x))) + time_emb_proj(act(temb))))), divided by output_scale_factor,
// with a 1x1 conv_shortcut on x when the channels change. Parameters are uninitialized until loaded.
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  ResnetBlock2DImpl(const ResnetBlock2DOptions& block, const at::TensorOptions& options);
  // temb [B, temb_channels] exactly when the block has a time embedding (diffuse::Error otherwise).
  at::Tensor forward(const at::Tensor& input, const at::Tensor& temb = {});

  const ResnetBlock2DOptions& options() const { return options_; }

  GroupNorm norm1{nullptr}, norm2{nullptr};
  Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  Linear time_emb_proj{nullptr};

 private:
  ResnetBlock2DOptions options_;
};
TORCH_MODULE(ResnetBlock2D);

}  // namespace diffuse
