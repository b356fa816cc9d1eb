#pragma once
// The parts of AutoencoderKL, as diffusers' Encoder and Decoder build them: the single-head
// self-attention and the middle block, the encoder and decoder blocks, and the Encoder and Decoder
// stacks themselves, over the shared ResnetBlock2D (without a time embedding), Downsample2D and
// Upsample2D (models/resnet.hpp, models/sampling.hpp). Every child carries diffusers' name, so that
// `encoder.down_blocks.0.resnets.0.conv1.weight` loads as is. They live in diffuse::vae because other
// models have blocks of the same names.

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "diffuse/io/configs.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/resnet.hpp"
#include "diffuse/models/sampling.hpp"
#include "diffuse/placement/module_hooks.hpp"

namespace diffuse::vae {

// Every norm in diffusers' VAE uses this epsilon (resnet_eps=1e-6 in Encoder and Decoder).
inline constexpr double kNormEps = 1e-6;

// diffusers' Attention as the VAE's middle block configures it: group_norm over channels, then
// self-attention across the H*W positions with one head of dim `channels`, projected by to_out.0,
// plus the input (residual_connection=True, rescale_output_factor=1).
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int64_t channels, int64_t groups, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input);

 private:
  int64_t heads_ = 1;
  GroupNorm group_norm{nullptr};
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out;  // [Linear]; diffusers' index 1 is dropout (no parameters)
};
TORCH_MODULE(Attention);

// diffusers' UNetMidBlock2D with one layer: resnets.0, attentions.0 (unless add_attention is false),
// resnets.1.
class UNetMidBlock2DImpl : public torch::nn::Module {
 public:
  UNetMidBlock2DImpl(int64_t channels, int64_t groups, const std::string& act_fn, bool add_attention,
                     const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input);

 private:
  torch::nn::ModuleList resnets, attentions;
};
TORCH_MODULE(UNetMidBlock2D);

// diffusers' DownEncoderBlock2D: `num_layers` resnets, then downsamplers.0 when add_downsample.
class DownEncoderBlock2DImpl : public torch::nn::Module {
 public:
  DownEncoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers, bool add_downsample,
                         int64_t groups, const std::string& act_fn, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input);

 private:
  torch::nn::ModuleList resnets, downsamplers;
};
TORCH_MODULE(DownEncoderBlock2D);

// diffusers' UpDecoderBlock2D: `num_layers` resnets, then upsamplers.0 when add_upsample.
class UpDecoderBlock2DImpl : public torch::nn::Module {
 public:
  UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers, bool add_upsample, int64_t groups,
                       const std::string& act_fn, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input);

 private:
  torch::nn::ModuleList resnets, upsamplers;
};
TORCH_MODULE(UpDecoderBlock2D);

// diffusers' Encoder (double_z=True): conv_in, down_blocks (each but the last halves H and W),
// mid_block, conv_norm_out, SiLU, conv_out to 2 * latent_channels (mean and log-variance).
class EncoderImpl : public torch::nn::Module, public HookedModule {
 public:
  EncoderImpl(const AutoencoderKLConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& images);

 private:
  Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList down_blocks;
  UNetMidBlock2D mid_block{nullptr};
  GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(Encoder);

// diffusers' Decoder (norm_type "group"): conv_in, mid_block, up_blocks over the reversed channels
// (layers_per_block + 1 resnets each; each but the last doubles H and W), conv_norm_out, SiLU, conv_out.
class DecoderImpl : public torch::nn::Module, public HookedModule {
 public:
  DecoderImpl(const AutoencoderKLConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& latents);

 private:
  Conv2d conv_in{nullptr}, conv_out{nullptr};
  UNetMidBlock2D mid_block{nullptr};
  torch::nn::ModuleList up_blocks;
  GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(Decoder);

}  // namespace diffuse::vae
