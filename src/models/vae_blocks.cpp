#include "diffuse/models/vae_blocks.hpp"

#include "diffuse/error.hpp"
#include "diffuse/models/attention.hpp"
#include "models/group_norm_nhwc.hpp"

namespace diffuse::vae {

namespace {

// The VAE's resnets: no time embedding, eps 1e-6, output scale 1.
ResnetBlock2D vae_resnet(int64_t in_channels, int64_t out_channels, int64_t groups, const std::string& act_fn,
                         const at::TensorOptions& options) {
  return ResnetBlock2D(ResnetBlock2DOptions{.in_channels = in_channels,
                                            .out_channels = out_channels,
                                            .groups = groups,
                                            .eps = kNormEps,
                                            .act_fn = act_fn},
                       options);
}

}  // namespace

AttentionImpl::AttentionImpl(int64_t channels, int64_t groups, const at::TensorOptions& options) {
  group_norm = register_module("group_norm", GroupNorm(groups, channels, kNormEps, true, options));
  to_q = register_module("to_q", Linear(channels, channels, true, options));
  to_k = register_module("to_k", Linear(channels, channels, true, options));
  to_v = register_module("to_v", Linear(channels, channels, true, options));
  to_out = register_module("to_out", torch::nn::ModuleList());
  to_out->push_back(Linear(channels, channels, true, options));
}

at::Tensor AttentionImpl::forward(const at::Tensor& input) {
  const int64_t b = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3);
  // Group norm over [B, C, H*W] is the same as over [B, C, H, W]; then one token per position (a view
  // when the map is channels-last; the output below is channels-last either way).
  at::Tensor tokens = group_norm(input).permute({0, 2, 3, 1}).reshape({b, h * w, c});
  auto split_heads = [&](const at::Tensor& x) { return x.view({b, h * w, heads_, c / heads_}).transpose(1, 2); };
  at::Tensor q = split_heads(to_q(tokens));
  at::Tensor k = split_heads(to_k(tokens));
  at::Tensor v = split_heads(to_v(tokens));
  at::Tensor attended = diffuse::scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape({b, h * w, c});
  at::Tensor projected = to_out[0]->as<LinearImpl>()->forward(attended);
  return projected.transpose(1, 2).reshape({b, c, h, w}) + input;
}

UNetMidBlock2DImpl::UNetMidBlock2DImpl(int64_t channels, int64_t groups, const std::string& act_fn, bool add_attention,
                                       const at::TensorOptions& options) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  resnets->push_back(vae_resnet(channels, channels, groups, act_fn, options));
  if (add_attention) attentions->push_back(Attention(channels, groups, options));
  resnets->push_back(vae_resnet(channels, channels, groups, act_fn, options));
}

at::Tensor UNetMidBlock2DImpl::forward(const at::Tensor& input) {
  at::Tensor hidden = resnets[0]->as<ResnetBlock2DImpl>()->forward(input);
  if (!attentions->is_empty()) hidden = attentions[0]->as<AttentionImpl>()->forward(hidden);
  return resnets[1]->as<ResnetBlock2DImpl>()->forward(hidden);
}

DownEncoderBlock2DImpl::DownEncoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers,
                                               bool add_downsample, int64_t groups, const std::string& act_fn,
                                               const at::TensorOptions& options) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  downsamplers = register_module("downsamplers", torch::nn::ModuleList());
  for (int64_t i = 0; i < num_layers; ++i)
    resnets->push_back(vae_resnet(i == 0 ? in_channels : out_channels, out_channels, groups, act_fn, options));
  if (add_downsample)
    downsamplers->push_back(
        Downsample2D(Downsample2DOptions{.channels = out_channels, .use_conv = true, .padding = 0}, options));
}

at::Tensor DownEncoderBlock2DImpl::forward(const at::Tensor& input) {
  at::Tensor hidden = input;
  for (const auto& resnet : *resnets) hidden = resnet->as<ResnetBlock2DImpl>()->forward(hidden);
  for (const auto& downsampler : *downsamplers) hidden = downsampler->as<Downsample2DImpl>()->forward(hidden);
  return hidden;
}

UpDecoderBlock2DImpl::UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers,
                                           bool add_upsample, int64_t groups, const std::string& act_fn,
                                           const at::TensorOptions& options) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  upsamplers = register_module("upsamplers", torch::nn::ModuleList());
  for (int64_t i = 0; i < num_layers; ++i)
    resnets->push_back(vae_resnet(i == 0 ? in_channels : out_channels, out_channels, groups, act_fn, options));
  if (add_upsample)
    upsamplers->push_back(Upsample2D(Upsample2DOptions{.channels = out_channels, .use_conv = true}, options));
}

at::Tensor UpDecoderBlock2DImpl::forward(const at::Tensor& input) {
  at::Tensor hidden = input;
  for (const auto& resnet : *resnets) hidden = resnet->as<ResnetBlock2DImpl>()->forward(hidden);
  for (const auto& upsampler : *upsamplers) hidden = upsampler->as<Upsample2DImpl>()->forward(hidden);
  return hidden;
}

EncoderImpl::EncoderImpl(const AutoencoderKLConfig& config, const at::TensorOptions& options) {
  const auto& channels = config.block_out_channels;
  const int64_t groups = config.norm_num_groups;
  conv_in = register_module("conv_in", Conv2d(config.in_channels, channels.front(), 3, 1, 1, true, options));
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  for (size_t i = 0; i < channels.size(); ++i) {
    if (config.down_block_types[i] != "DownEncoderBlock2D")
      throw Error("AutoencoderKL: down block type '" + config.down_block_types[i] +
                  "' is not supported (only DownEncoderBlock2D)");
    const int64_t in = i == 0 ? channels.front() : channels[i - 1];
    const bool is_final = i + 1 == channels.size();
    down_blocks->push_back(
        DownEncoderBlock2D(in, channels[i], config.layers_per_block, !is_final, groups, config.act_fn, options));
  }
  mid_block = register_module(
      "mid_block", UNetMidBlock2D(channels.back(), groups, config.act_fn, config.mid_block_add_attention, options));
  conv_norm_out = register_module("conv_norm_out", GroupNorm(groups, channels.back(), kNormEps, true, options));
  conv_out = register_module("conv_out", Conv2d(channels.back(), 2 * config.latent_channels, 3, 1, 1, true, options));
}

// On CUDA in half precision the maps stay channels-last inside (as in the UNet: cuDNN's NHWC
// convolutions, our GroupNorm kernels); callers get NCHW-contiguous tensors back.
at::Tensor EncoderImpl::forward(const at::Tensor& images) {
  at::Tensor hidden = forward_unit(*conv_in, channels_last_where_fused(images));
  for (const auto& block : *down_blocks) hidden = forward_unit(*block->as<DownEncoderBlock2DImpl>(), hidden);
  hidden = forward_unit(*mid_block, hidden);
  hidden = run_unit(*conv_norm_out, [this](const at::Tensor& x) { return conv_norm_out->forward_then(x, "silu"); }, hidden);
  hidden = forward_unit(*conv_out, hidden);
  return hidden.contiguous();  // a no-op where it already is
}

DecoderImpl::DecoderImpl(const AutoencoderKLConfig& config, const at::TensorOptions& options) {
  const auto& channels = config.block_out_channels;
  const int64_t groups = config.norm_num_groups;
  conv_in = register_module("conv_in", Conv2d(config.latent_channels, channels.back(), 3, 1, 1, true, options));
  mid_block = register_module(
      "mid_block", UNetMidBlock2D(channels.back(), groups, config.act_fn, config.mid_block_add_attention, options));
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  const size_t n = channels.size();
  for (size_t i = 0; i < n; ++i) {
    if (config.up_block_types[i] != "UpDecoderBlock2D")
      throw Error("AutoencoderKL: up block type '" + config.up_block_types[i] +
                  "' is not supported (only UpDecoderBlock2D)");
    // Channels run in reverse: block i goes from reversed[i-1] to reversed[i].
    const int64_t in = channels[n - (i == 0 ? 1 : i)];
    const int64_t out = channels[n - 1 - i];
    const bool is_final = i + 1 == n;
    up_blocks->push_back(
        UpDecoderBlock2D(in, out, config.layers_per_block + 1, !is_final, groups, config.act_fn, options));
  }
  conv_norm_out = register_module("conv_norm_out", GroupNorm(groups, channels.front(), kNormEps, true, options));
  conv_out = register_module("conv_out", Conv2d(channels.front(), config.out_channels, 3, 1, 1, true, options));
}

at::Tensor DecoderImpl::forward(const at::Tensor& latents) {
  at::Tensor hidden = forward_unit(*conv_in, channels_last_where_fused(latents));
  hidden = forward_unit(*mid_block, hidden);
  for (const auto& block : *up_blocks) hidden = forward_unit(*block->as<UpDecoderBlock2DImpl>(), hidden);
  hidden = run_unit(*conv_norm_out, [this](const at::Tensor& x) { return conv_norm_out->forward_then(x, "silu"); }, hidden);
  hidden = forward_unit(*conv_out, hidden);
  return hidden.contiguous();  // a no-op where it already is
}

}  // namespace diffuse::vae
