#pragma once
// diffusers' Downsample2D and Upsample2D (downsampling.py, upsampling.py), as the VAE and the UNet use
// them: halving H and W by a stride-2 3x3 conv, and doubling them by nearest-neighbour interpolation and
// a 3x3 conv. The conv is the child `conv`, so `down_blocks.0.downsamplers.0.conv.weight` loads as is.

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <vector>

#include "diffuse/models/layers.hpp"

namespace diffuse {

// diffusers' arguments and defaults.
struct Downsample2DOptions {
  int64_t channels = 0;
  int64_t out_channels = 0;  // 0: channels (only with use_conv; average pooling keeps them)
  // A stride-2 3x3 conv `conv`; without it, 2x2 average pooling (no parameters).
  bool use_conv = false;
  // The conv's padding. 0 is the original LDM VAE's: the input is padded right and bottom by one first
  // (so H and W halve rounding down whatever their parity); the UNet uses 1 (halving rounding up).
  int64_t padding = 1;
};

class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(const Downsample2DOptions& downsample, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input);
  Conv2d conv{nullptr};  // empty without use_conv

 private:
  Downsample2DOptions options_;
};
TORCH_MODULE(Downsample2D);

struct Upsample2DOptions {
  int64_t channels = 0;
  int64_t out_channels = 0;  // 0: channels
  bool use_conv = false;     // a 3x3 conv `conv` after the interpolation
};

class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(const Upsample2DOptions& upsample, const at::TensorOptions& options);
  // Nearest-neighbour 2x; or, with `output_size` {H, W}, nearest-neighbour to exactly that size
  // (diffusers' upsample_size: the UNet passes its skip connection's size when the latent is not a
  // multiple of 2^upsamplers, so that an odd size that was halved up comes back to itself).
  at::Tensor forward(const at::Tensor& input, const std::vector<int64_t>& output_size = {});
  Conv2d conv{nullptr};  // empty without use_conv

 private:
  Upsample2DOptions options_;
};
TORCH_MODULE(Upsample2D);

// Nearest-neighbour 2x upsampling of [B, C, H, W], exact in every dtype (each pixel copied into a
// 2x2 square, as F.interpolate(scale_factor=2, mode="nearest") does).
at::Tensor upsample_nearest_2x(const at::Tensor& input);

// F.interpolate(input, size={H, W}, mode="nearest"): output pixel i takes input floor(i * in / out).
at::Tensor upsample_nearest(const at::Tensor& input, const std::vector<int64_t>& output_size);

}  // namespace diffuse
