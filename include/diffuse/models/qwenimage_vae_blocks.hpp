#pragma once
// The parts of AutoencoderKLQwenImage (diffusers' autoencoder_kl_qwenimage.py, itself the Wan 2.1 video
// VAE): causal 3D convolutions, channel-first RMS norms, residual blocks, the single-head attention of
// the middle block, the spatial (and temporal) resamplers, and the Encoder3d / Decoder3d stacks. Every
// child carries diffusers' name, so that `decoder.up_blocks.0.upsamplers.0.resample.1.weight` loads as is.
//
// Tensors are video-shaped, [batch, channels, frames, height, width]. diffusers runs the VAE chunk by
// chunk (one frame at a time when decoding; the first frame, then groups of four, when encoding), each
// causal convolution reading the previous chunk's last frames from a feature cache. These blocks compute
// the first chunk, whose caches are empty: a causal convolution sees zeros before the first frame, and
// the temporal resamplers do not run yet (diffusers marks the cache and moves on). For one frame, as
// text-to-image has, that is the whole computation; the model refuses other frame counts
// (autoencoder_kl_qwenimage.hpp).

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <array>
#include <cstdint>
#include <optional>

#include "diffuse/models/attention_backend.hpp"
#include "diffuse/models/autoencoder_kl_qwenimage_config.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/placement/module_hooks.hpp"

namespace diffuse::qwenimage_vae {

// diffusers' QwenImageCausalConv3d: a Conv3d whose time padding (2 * padding[0]) is all on the left, so
// that frame t sees frames <= t only; height and width are padded on both sides as usual. Parameters
// `weight` [out, in, kt, kh, kw] and `bias` [out]. Sizes are (time, height, width).
class CausalConv3dImpl : public torch::nn::Module {
 public:
  CausalConv3dImpl(int64_t in_channels, int64_t out_channels, std::array<int64_t, 3> kernel,
                   std::array<int64_t, 3> stride, std::array<int64_t, 3> padding, const at::TensorOptions& options);
  // The common cube: kernel k in every dimension, stride 1, padding p in every dimension.
  CausalConv3dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t padding,
                   const at::TensorOptions& options)
      : CausalConv3dImpl(in_channels, out_channels, {kernel, kernel, kernel}, {1, 1, 1}, {padding, padding, padding},
                         options) {}
  // x [B, in, T, H, W] -> [B, out, T', H', W'].
  at::Tensor forward(const at::Tensor& x);

  at::Tensor weight, bias;

 private:
  std::array<int64_t, 3> kernel_, stride_, padding_;
};
TORCH_MODULE(CausalConv3d);

// diffusers' QwenImageRMS_norm (channel_first, no bias): F.normalize over the channels (an L2 norm, in
// float32 for half-precision inputs), times sqrt(dim) and the learned `gamma`. gamma is [dim, 1, 1, 1]
// for video tensors (images = false) and [dim, 1, 1] for the attention's per-frame [N, C, H, W] input.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, bool images, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);

  at::Tensor gamma;

 private:
  double scale_;
};
TORCH_MODULE(RMSNorm);

// What the encoder's down_blocks list holds (residual, attention and resample blocks, in one list as
// diffusers has them): a block from a video tensor to a video tensor.
class FrameBlock : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& x) = 0;
};

// diffusers' QwenImageResidualBlock: norm1, SiLU, conv1 (3x3x3), norm2, SiLU, (dropout), conv2, plus the
// input through conv_shortcut (1x1x1) when the channels change.
class ResidualBlockImpl : public FrameBlock {
 public:
  ResidualBlockImpl(int64_t in_dim, int64_t out_dim, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) override;

 private:
  RMSNorm norm1{nullptr}, norm2{nullptr};
  CausalConv3d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
};
TORCH_MODULE(ResidualBlock);

// diffusers' QwenImageAttentionBlock: for each frame, RMS norm, a 1x1 conv to q, k, v (to_qkv), one head
// of dim C over the H*W positions (no mask), the 1x1 output conv `proj`, plus the input.
class AttentionBlockImpl : public FrameBlock {
 public:
  AttentionBlockImpl(int64_t dim, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) override;

  // The kernel (attention_backend.hpp). Where it resolves to the math path (the CPU), the queries run
  // in slices so that the float32 score matrix stays small: at 1328x1328 one frame has 27,556
  // positions, whose whole score matrix would take 3 GB.
  AttentionBackend backend = AttentionBackend::automatic;
  // The most float32 scores one slice holds on the math path (2^26: 256 MB).
  int64_t max_scores_per_slice = int64_t{1} << 26;

 private:
  RMSNorm norm{nullptr};
  Conv2d to_qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE(AttentionBlock);

// diffusers' QwenImageResample. Spatially: upsample2d/3d double H and W (nearest, then a 3x3 conv to
// dim / 2 channels: `resample.1`); downsample2d/3d halve them (zero pad right and bottom by one, then a
// 3x3 conv of stride 2). The 3d modes also hold `time_conv` (3x1x1; upsampling doubles the frames,
// downsampling halves them), which diffusers runs only from the second chunk on: loaded, unused here.
class ResampleImpl : public FrameBlock {
 public:
  enum class Mode { upsample2d, upsample3d, downsample2d, downsample3d };
  ResampleImpl(int64_t dim, Mode mode, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) override;

 private:
  Mode mode_;
  torch::nn::ModuleList resample;  // [no parameters (upsample / zero pad), Conv2d]
  CausalConv3d time_conv{nullptr};
};
TORCH_MODULE(Resample);

// diffusers' QwenImageMidBlock with one layer: resnets.0, attentions.0, resnets.1.
class MidBlockImpl : public torch::nn::Module {
 public:
  MidBlockImpl(int64_t dim, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);

 private:
  torch::nn::ModuleList resnets, attentions;
};
TORCH_MODULE(MidBlock);

// diffusers' QwenImageUpBlock: num_res_blocks + 1 residual blocks, then upsamplers.0 when it has one.
class UpBlockImpl : public torch::nn::Module {
 public:
  UpBlockImpl(int64_t in_dim, int64_t out_dim, int64_t num_res_blocks, std::optional<ResampleImpl::Mode> upsample,
              const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);

 private:
  torch::nn::ModuleList resnets, upsamplers{nullptr};  // upsamplers: absent on the last level
};
TORCH_MODULE(UpBlock);

// diffusers' QwenImageEncoder3d, as the model builds it (z_dim * 2 outputs: mean and log-variance):
// conv_in; per level num_res_blocks residual blocks (each followed by an attention block at the levels
// attn_scales names) and, but for the last level, a downsampler; mid_block; norm_out, SiLU, conv_out.
class Encoder3dImpl : public torch::nn::Module, public HookedModule {
 public:
  Encoder3dImpl(const AutoencoderKLQwenImageConfig& config, const at::TensorOptions& options);
  // images [B, input_channels, 1, H, W] -> [B, 2 * z_dim, 1, H / f, W / f] (f the spatial factor).
  at::Tensor forward(const at::Tensor& images);

 private:
  CausalConv3d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList down_blocks;  // FrameBlocks
  MidBlock mid_block{nullptr};
  RMSNorm norm_out{nullptr};
};
TORCH_MODULE(Encoder3d);

// diffusers' QwenImageDecoder3d: conv_in, mid_block, up_blocks over the reversed widths (each but the
// last doubles H and W, the temporal mode from temperal_downsample reversed), norm_out, SiLU, conv_out.
class Decoder3dImpl : public torch::nn::Module, public HookedModule {
 public:
  Decoder3dImpl(const AutoencoderKLQwenImageConfig& config, const at::TensorOptions& options);
  // latents [B, z_dim, 1, h, w] -> [B, input_channels, 1, h * f, w * f], not clamped.
  at::Tensor forward(const at::Tensor& latents);

 private:
  CausalConv3d conv_in{nullptr}, conv_out{nullptr};
  MidBlock mid_block{nullptr};
  torch::nn::ModuleList up_blocks;
  RMSNorm norm_out{nullptr};
};
TORCH_MODULE(Decoder3d);

// Sets the attention kernel of every AttentionBlock inside `module`.
void set_attention_backend(torch::nn::Module& module, AttentionBackend backend);

}  // namespace diffuse::qwenimage_vae
