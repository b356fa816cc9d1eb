#pragma once
// diffusers' AutoencoderKLQwenImage: Qwen-Image's VAE (the Wan 2.1 video VAE, fine-tuned), mapping images
// to latents 8x smaller per side with 16 channels, and back. Its tensors are video-shaped, [batch,
// channels, frames, height, width]; text-to-image has one frame, and that is what diffuse runs: encode
// and decode of one frame, computed as diffusers' chunked, feature-cached loop computes it for one frame
// (qwenimage_vae_blocks.hpp says why that is a plain causal pass). Other frame counts are refused.
//
// The model works on raw latents; the pipeline normalizes them with the config's latents_mean and
// latents_std (scale_latents / unscale_latents below), as diffusers' QwenImagePipeline does:
//
//   auto vae = load_model<AutoencoderKLQwenImage>(folder / "vae", {.dtype = at::kBFloat16, .device = "cuda"});
//   at::Tensor image = vae->decode(unscale_latents(latents, vae->config()));  // [B, 3, 1, H, W] in [-1, 1]
//   image = image.select(2, 0);                                                // [B, 3, H, W]

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <utility>
#include <vector>

#include "diffuse/models/attention_backend.hpp"
#include "diffuse/models/autoencoder_kl_qwenimage_config.hpp"
#include "diffuse/models/qwenimage_vae_blocks.hpp"
#include "diffuse/placement/placeable_model.hpp"

namespace diffuse {

// Its units, for placement, in the order they run: encoder.conv_in, encoder.down_blocks.N (residual,
// attention and resample blocks), encoder.mid_block, encoder.norm_out, encoder.conv_out, quant_conv,
// post_quant_conv, decoder.conv_in, decoder.mid_block, decoder.up_blocks.N, decoder.norm_out,
// decoder.conv_out.
class AutoencoderKLQwenImageImpl : public torch::nn::Module, public PlaceableModel {
 public:
  using Config = AutoencoderKLQwenImageConfig;
  // Children under diffusers' names: encoder, quant_conv, post_quant_conv, decoder. Parameters are
  // uninitialized until weights are loaded. Throws diffuse::Error for a config that fails validate().
  AutoencoderKLQwenImageImpl(const AutoencoderKLQwenImageConfig& config, const at::TensorOptions& options);

  // The posterior's mean and log-variance (clamped to [-30, 20] as DiagonalGaussianDistribution does) for
  // images [B, input_channels, 1, H, W] in [-1, 1]; each [B, z_dim, 1, H / f, W / f] with f the spatial
  // factor (8 for Qwen-Image). Sizes that are not multiples of f round down at each halving, as in
  // diffusers; H and W must be at least f.
  std::pair<at::Tensor, at::Tensor> encode_moments(const at::Tensor& images);
  // `latent_dist.mean` (also its mode): the deterministic encoding.
  at::Tensor encode(const at::Tensor& images);
  // latents [B, z_dim, 1, h, w] -> images [B, input_channels, 1, h * f, w * f], clamped to [-1, 1] as
  // diffusers' _decode does.
  at::Tensor decode(const at::Tensor& latents);

  const AutoencoderKLQwenImageConfig& config() const { return config_; }

  // The kernel of the middle blocks' attention (and the encoder's, where attn_scales adds some):
  // automatic picks a fused kernel on CUDA and the math path elsewhere.
  void set_attention_backend(AttentionBackend backend);
  AttentionBackend attention_backend() const { return backend_; }

  // Placement (placement/placeable_model.hpp). The estimate is for decoding (or encoding) one 1328x1328
  // image, Qwen-Image's square size: the widest full-resolution residual block holds four maps of
  // base_dim * dim_mult[0] channels (its input, two temporaries and its output), 1.35 GB in bfloat16
  // for the published VAE, plus a quarter for convolution workspaces.
  std::vector<std::string> unit_containers() const override;
  uint64_t activation_estimate() const override;

 private:
  AutoencoderKLQwenImageConfig config_;
  AttentionBackend backend_ = AttentionBackend::automatic;
  qwenimage_vae::Encoder3d encoder{nullptr};
  qwenimage_vae::CausalConv3d quant_conv{nullptr}, post_quant_conv{nullptr};
  qwenimage_vae::Decoder3d decoder{nullptr};
};
TORCH_MODULE(AutoencoderKLQwenImage);

// The pipeline's normalization, channel by channel for latents [B, z_dim, ...] (any rank >= 2), in the
// latents' dtype as diffusers computes it (mean and 1 / std are made in float32, then cast):
// encoder mean -> the transformer's latent space: (latents - mean) * (1 / std).
at::Tensor scale_latents(const at::Tensor& latents, const AutoencoderKLQwenImageConfig& config);
// The inverse, before decoding: latents / (1 / std) + mean.
at::Tensor unscale_latents(const at::Tensor& latents, const AutoencoderKLQwenImageConfig& config);

}  // namespace diffuse
