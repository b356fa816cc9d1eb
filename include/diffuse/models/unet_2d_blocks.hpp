#pragma once
// The blocks of SD's UNet (diffusers' unet_2d_blocks.py): down blocks that keep every intermediate map
// as a skip connection, the cross-attention middle block, and up blocks that take those maps back,
// last first, concatenated on the channels. Children carry diffusers' names (resnets.N, attentions.N,
// downsamplers.0, upsamplers.0), so `up_blocks.1.attentions.2.proj_out.weight` loads as is.

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "diffuse/models/resnet.hpp"
#include "diffuse/models/sampling.hpp"
#include "diffuse/models/transformer_2d.hpp"

namespace diffuse {

// What diffusers' get_down_block / get_mid_block / get_up_block pass to the blocks SD uses.
struct UNetBlockOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t prev_output_channel = 0;  // up blocks: the channels coming from the block below
  int64_t temb_channels = 1280;
  int64_t num_layers = 1;          // resnets (with a transformer after each in cross-attention blocks)
  int64_t transformer_layers = 1;  // BasicTransformerBlocks in each transformer
  double resnet_eps = 1e-5;
  std::string resnet_act_fn = "silu";
  int64_t resnet_groups = 32;
  double output_scale_factor = 1.0;  // of the resnets
  int64_t num_attention_heads = 8;   // heads of out_channels / num_attention_heads channels
  int64_t cross_attention_dim = 768;
  bool use_linear_projection = false;
  bool add_downsample = true;  // down blocks: a stride-2 conv at the end
  int64_t downsample_padding = 1;
  bool add_upsample = true;  // up blocks: nearest-neighbour 2x and a conv at the end
};

// A down block's output, and the maps it leaves for the up blocks (one per resnet, plus the
// downsampled output), in the order diffusers' output_states has them.
struct DownBlockOutput {
  at::Tensor hidden_states;
  std::vector<at::Tensor> res_samples;
};

// diffusers' DownBlock2D: num_layers resnets, then downsamplers.0 when add_downsample.
class DownBlock2DImpl : public torch::nn::Module {
 public:
  DownBlock2DImpl(const UNetBlockOptions& block, const at::TensorOptions& options);
  DownBlockOutput forward(const at::Tensor& hidden_states, const at::Tensor& temb);
  torch::nn::ModuleList resnets, downsamplers;
};
TORCH_MODULE(DownBlock2D);

// diffusers' CrossAttnDownBlock2D: each resnet followed by a Transformer2DModel (attentions.N) that
// attends to the text; then downsamplers.0 when add_downsample.
class CrossAttnDownBlock2DImpl : public torch::nn::Module {
 public:
  CrossAttnDownBlock2DImpl(const UNetBlockOptions& block, const at::TensorOptions& options);
  DownBlockOutput forward(const at::Tensor& hidden_states, const at::Tensor& temb,
                          const at::Tensor& encoder_hidden_states);
  torch::nn::ModuleList resnets, attentions, downsamplers;
};
TORCH_MODULE(CrossAttnDownBlock2D);

// diffusers' UNetMidBlock2DCrossAttn with one layer: resnets.0, attentions.0, resnets.1 at in_channels.
class UNetMidBlock2DCrossAttnImpl : public torch::nn::Module {
 public:
  UNetMidBlock2DCrossAttnImpl(const UNetBlockOptions& block, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& temb, const at::Tensor& encoder_hidden_states);
  torch::nn::ModuleList resnets, attentions;
};
TORCH_MODULE(UNetMidBlock2DCrossAttn);

// diffusers' UpBlock2D: num_layers resnets, each on [hidden, the last remaining skip] concatenated on
// the channels; then upsamplers.0 when add_upsample. `res_samples` holds num_layers skips, used last
// first; `upsample_size` {H, W} is passed to the upsampler (empty: 2x).
class UpBlock2DImpl : public torch::nn::Module {
 public:
  UpBlock2DImpl(const UNetBlockOptions& block, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states, const std::vector<at::Tensor>& res_samples,
                     const at::Tensor& temb, const std::vector<int64_t>& upsample_size = {});
  torch::nn::ModuleList resnets, upsamplers;
};
TORCH_MODULE(UpBlock2D);

// diffusers' CrossAttnUpBlock2D: UpBlock2D with a Transformer2DModel after each resnet.
class CrossAttnUpBlock2DImpl : public torch::nn::Module {
 public:
  CrossAttnUpBlock2DImpl(const UNetBlockOptions& block, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& hidden_states, const std::vector<at::Tensor>& res_samples,
                     const at::Tensor& temb, const at::Tensor& encoder_hidden_states,
                     const std::vector<int64_t>& upsample_size = {});
  torch::nn::ModuleList resnets, attentions, upsamplers;
};
TORCH_MODULE(CrossAttnUpBlock2D);

}  // namespace diffuse
