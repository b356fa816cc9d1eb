#pragma once
// diffusers' AutoencoderKL: the VAE that maps images to latents (8x smaller per side in FLUX.1) and
// back. The model works on raw latents; the pipeline applies the config's scaling_factor and
// shift_factor (scale_latents / unscale_latents below), as diffusers' pipelines do.
//
//   auto vae = load_autoencoder_kl(pipeline_folder / "vae", at::kBFloat16, at::kCUDA);
//   at::Tensor image = vae->decode(unscale_latents(latents, vae->config()));  // [B, 3, H, W] in [-1, 1]

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <filesystem>
#include <utility>

#include "diffuse/io/configs.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/vae_blocks.hpp"
#include "diffuse/placement/placeable_model.hpp"

namespace diffuse {

// Its units, for placement: encoder.conv_in, encoder.down_blocks.N, encoder.mid_block,
// encoder.conv_norm_out, encoder.conv_out, decoder.conv_in, decoder.mid_block, decoder.up_blocks.N,
// decoder.conv_norm_out, decoder.conv_out, and quant_conv / post_quant_conv when present.
class AutoencoderKLImpl : public torch::nn::Module, public PlaceableModel {
 public:
  using Config = AutoencoderKLConfig;
  // Children: encoder, decoder, and quant_conv / post_quant_conv when the config asks for them
  // (SD has both; FLUX.1 has neither). Parameters are uninitialized until weights are loaded.
  AutoencoderKLImpl(const AutoencoderKLConfig& config, const at::TensorOptions& options);

  // The posterior's mean and log-variance (clamped to [-30, 20] as DiagonalGaussianDistribution does)
  // for images [B, in_channels, H, W] in [-1, 1]; each [B, latent_channels, H/f, W/f].
  std::pair<at::Tensor, at::Tensor> encode_moments(const at::Tensor& images);
  // `latent_dist.mean`: the deterministic encoding.
  at::Tensor encode_mean(const at::Tensor& images);
  // The decoder's raw output [B, out_channels, H*f, W*f], nominally in [-1, 1] (not clamped).
  at::Tensor decode(const at::Tensor& latents);

  const AutoencoderKLConfig& config() const { return config_; }

  // Placement (placement/placeable_model.hpp).
  std::vector<std::string> unit_containers() const override;
  uint64_t activation_estimate() const override;

 private:
  AutoencoderKLConfig config_;
  vae::Encoder encoder{nullptr};
  vae::Decoder decoder{nullptr};
  Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};
};
TORCH_MODULE(AutoencoderKL);

// Reads `folder`/config.json and the folder's safetensors into a model of `dtype` on `device`.
// Throws diffuse::Error naming the file for a bad config and listing names for mismatched weights.
AutoencoderKL load_autoencoder_kl(const std::filesystem::path& folder, c10::ScalarType dtype = at::kFloat,
                                  c10::Device device = at::kCPU);

// Encoder mean -> the latent space the transformer works in: (latents - shift_factor) * scaling_factor.
at::Tensor scale_latents(const at::Tensor& latents, const AutoencoderKLConfig& config);
// The inverse, before decoding: latents / scaling_factor + shift_factor (shift 0 when the config has none).
at::Tensor unscale_latents(const at::Tensor& latents, const AutoencoderKLConfig& config);

}  // namespace diffuse
