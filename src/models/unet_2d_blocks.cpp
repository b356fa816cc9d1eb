#include "diffuse/models/unet_2d_blocks.hpp"

#include "diffuse/error.hpp"

namespace diffuse {
namespace {

ResnetBlock2D resnet(const UNetBlockOptions& o, int64_t in_channels, int64_t out_channels,
                     const at::TensorOptions& options) {
  return ResnetBlock2D(ResnetBlock2DOptions{.in_channels = in_channels,
                                            .out_channels = out_channels,
                                            .temb_channels = o.temb_channels,
                                            .groups = o.resnet_groups,
                                            .eps = o.resnet_eps,
                                            .act_fn = o.resnet_act_fn,
                                            .output_scale_factor = o.output_scale_factor},
                       options);
}

// The Transformer2DModel of a cross-attention block at `channels`.
Transformer2DModel transformer(const UNetBlockOptions& o, int64_t channels, const at::TensorOptions& options) {
  if (o.num_attention_heads <= 0 || channels % o.num_attention_heads != 0)
    throw Error("UNet block: " + std::to_string(o.num_attention_heads) + " attention heads do not split " +
                std::to_string(channels) + " channels");
  return Transformer2DModel(Transformer2DModelOptions{.num_attention_heads = o.num_attention_heads,
                                                      .attention_head_dim = channels / o.num_attention_heads,
                                                      .in_channels = channels,
                                                      .num_layers = o.transformer_layers,
                                                      .norm_num_groups = o.resnet_groups,
                                                      .cross_attention_dim = o.cross_attention_dim,
                                                      .use_linear_projection = o.use_linear_projection},
                            options);
}

Downsample2D downsampler(const UNetBlockOptions& o, const at::TensorOptions& options) {
  return Downsample2D(
      Downsample2DOptions{.channels = o.out_channels, .use_conv = true, .padding = o.downsample_padding}, options);
}

// Up block resnet i takes the hidden state (prev_output_channel for the first, out_channels after)
// concatenated with one skip: the last one comes from the down block below this level
// (in_channels), the others from this level (out_channels).
int64_t up_resnet_in_channels(const UNetBlockOptions& o, int64_t i) {
  const int64_t skip = i == o.num_layers - 1 ? o.in_channels : o.out_channels;
  const int64_t hidden = i == 0 ? o.prev_output_channel : o.out_channels;
  return hidden + skip;
}

void check_skips(const char* block, const std::vector<at::Tensor>& res_samples, size_t resnets) {
  if (res_samples.size() != resnets)
    throw Error(std::string(block) + ": expected " + std::to_string(resnets) + " skip connections, got " +
                std::to_string(res_samples.size()));
}

}  // namespace

DownBlock2DImpl::DownBlock2DImpl(const UNetBlockOptions& o, const at::TensorOptions& options) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  downsamplers = register_module("downsamplers", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i)
    resnets->push_back(resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels, options));
  if (o.add_downsample) downsamplers->push_back(downsampler(o, options));
}

DownBlockOutput DownBlock2DImpl::forward(const at::Tensor& hidden_states, const at::Tensor& temb) {
  DownBlockOutput out{hidden_states, {}};
  for (const auto& block : *resnets) {
    out.hidden_states = block->as<ResnetBlock2DImpl>()->forward(out.hidden_states, temb);
    out.res_samples.push_back(out.hidden_states);
  }
  for (const auto& block : *downsamplers) {
    out.hidden_states = block->as<Downsample2DImpl>()->forward(out.hidden_states);
    out.res_samples.push_back(out.hidden_states);
  }
  return out;
}

CrossAttnDownBlock2DImpl::CrossAttnDownBlock2DImpl(const UNetBlockOptions& o, const at::TensorOptions& options) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  downsamplers = register_module("downsamplers", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    resnets->push_back(resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels, options));
    attentions->push_back(transformer(o, o.out_channels, options));
  }
  if (o.add_downsample) downsamplers->push_back(downsampler(o, options));
}

DownBlockOutput CrossAttnDownBlock2DImpl::forward(const at::Tensor& hidden_states, const at::Tensor& temb,
                                                  const at::Tensor& encoder_hidden_states) {
  DownBlockOutput out{hidden_states, {}};
  for (size_t i = 0; i < resnets->size(); ++i) {
    out.hidden_states = resnets[i]->as<ResnetBlock2DImpl>()->forward(out.hidden_states, temb);
    out.hidden_states = attentions[i]->as<Transformer2DModelImpl>()->forward(out.hidden_states, encoder_hidden_states);
    out.res_samples.push_back(out.hidden_states);
  }
  for (const auto& block : *downsamplers) {
    out.hidden_states = block->as<Downsample2DImpl>()->forward(out.hidden_states);
    out.res_samples.push_back(out.hidden_states);
  }
  return out;
}

UNetMidBlock2DCrossAttnImpl::UNetMidBlock2DCrossAttnImpl(const UNetBlockOptions& o, const at::TensorOptions& options) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  resnets->push_back(resnet(o, o.in_channels, o.in_channels, options));
  attentions->push_back(transformer(o, o.in_channels, options));
  resnets->push_back(resnet(o, o.in_channels, o.in_channels, options));
}

at::Tensor UNetMidBlock2DCrossAttnImpl::forward(const at::Tensor& hidden_states, const at::Tensor& temb,
                                                const at::Tensor& encoder_hidden_states) {
  at::Tensor hidden = resnets[0]->as<ResnetBlock2DImpl>()->forward(hidden_states, temb);
  hidden = attentions[0]->as<Transformer2DModelImpl>()->forward(hidden, encoder_hidden_states);
  return resnets[1]->as<ResnetBlock2DImpl>()->forward(hidden, temb);
}

UpBlock2DImpl::UpBlock2DImpl(const UNetBlockOptions& o, const at::TensorOptions& options) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  upsamplers = register_module("upsamplers", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i)
    resnets->push_back(resnet(o, up_resnet_in_channels(o, i), o.out_channels, options));
  if (o.add_upsample)
    upsamplers->push_back(Upsample2D(Upsample2DOptions{.channels = o.out_channels, .use_conv = true}, options));
}

at::Tensor UpBlock2DImpl::forward(const at::Tensor& hidden_states, const std::vector<at::Tensor>& res_samples,
                                  const at::Tensor& temb, const std::vector<int64_t>& upsample_size) {
  check_skips("UpBlock2D", res_samples, resnets->size());
  at::Tensor hidden = hidden_states;
  for (size_t i = 0; i < resnets->size(); ++i) {
    const at::Tensor& skip = res_samples[res_samples.size() - 1 - i];  // the last one first
    hidden = resnets[i]->as<ResnetBlock2DImpl>()->forward(at::cat({hidden, skip}, /*dim=*/1), temb);
  }
  for (const auto& block : *upsamplers) hidden = block->as<Upsample2DImpl>()->forward(hidden, upsample_size);
  return hidden;
}

CrossAttnUpBlock2DImpl::CrossAttnUpBlock2DImpl(const UNetBlockOptions& o, const at::TensorOptions& options) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  upsamplers = register_module("upsamplers", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    resnets->push_back(resnet(o, up_resnet_in_channels(o, i), o.out_channels, options));
    attentions->push_back(transformer(o, o.out_channels, options));
  }
  if (o.add_upsample)
    upsamplers->push_back(Upsample2D(Upsample2DOptions{.channels = o.out_channels, .use_conv = true}, options));
}

at::Tensor CrossAttnUpBlock2DImpl::forward(const at::Tensor& hidden_states, const std::vector<at::Tensor>& res_samples,
                                           const at::Tensor& temb, const at::Tensor& encoder_hidden_states,
                                           const std::vector<int64_t>& upsample_size) {
  check_skips("CrossAttnUpBlock2D", res_samples, resnets->size());
  at::Tensor hidden = hidden_states;
  for (size_t i = 0; i < resnets->size(); ++i) {
    const at::Tensor& skip = res_samples[res_samples.size() - 1 - i];
    hidden = resnets[i]->as<ResnetBlock2DImpl>()->forward(at::cat({hidden, skip}, /*dim=*/1), temb);
    hidden = attentions[i]->as<Transformer2DModelImpl>()->forward(hidden, encoder_hidden_states);
  }
  for (const auto& block : *upsamplers) hidden = block->as<Upsample2DImpl>()->forward(hidden, upsample_size);
  return hidden;
}

}  // namespace diffuse
