#pragma once
// diffusers' AutoencoderKLQwenImage config (vae/config.json of a Qwen-Image pipeline), with diffusers'
// defaults, which are the published Qwen-Image VAE's: base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4],
// two residual blocks per level, temporal downsampling [False, True, True] and the 16 latent means and
// standard deviations the pipeline normalizes latents with.
//
// `temperal_downsample` (diffusers' spelling) has one entry per downsampling level, so it also gives the
// spatial factor: each entry halves height and width, 2 ** len(temperal_downsample) in all (8 for
// Qwen-Image). The entries say which levels also halve time; with one frame, as text-to-image has,
// no temporal resampling runs (see autoencoder_kl_qwenimage.hpp).

#include <cstdint>
#include <filesystem>
#include <vector>

#include "diffuse/io/json_config.hpp"

namespace diffuse {

struct AutoencoderKLQwenImageConfig {
  int64_t base_dim = 96;  // channels of the first level; level i has base_dim * dim_mult[i]
  int64_t z_dim = 16;     // latent channels (the encoder's moments have 2 * z_dim)
  std::vector<int64_t> dim_mult = {1, 2, 4, 4};
  int64_t num_res_blocks = 2;  // per encoder level; decoder levels have one more
  // Encoder levels (scale 1, 1/2, 1/4, ...) that get an attention block after each residual block.
  std::vector<double> attn_scales = {};
  // One per level but the last: whether its downsampler also halves time.
  std::vector<bool> temperal_downsample = {false, true, true};
  double dropout = 0.0;  // used in training only
  int64_t input_channels = 3;
  std::vector<double> latents_mean = {-0.7571, -0.7089, -0.9113, 0.1075,  -0.1745, 0.9653,  -0.1517, 1.5508,
                                      0.4134,  -0.0715, 0.5517,  -0.3632, -0.1922, -0.9497, 0.2503,  -0.2921};
  std::vector<double> latents_std = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};

  // diffusers' spatial_compression_ratio, which the pipeline calls vae_scale_factor: 2 ** len(temperal_downsample).
  int64_t spatial_compression_ratio() const { return int64_t{1} << temperal_downsample.size(); }
  int64_t vae_scale_factor() const { return spatial_compression_ratio(); }

  // Reads config.json. Throws diffuse::Error naming the file and the key for a value of the wrong type,
  // another _class_name, sizes out of range, lists whose lengths disagree (temperal_downsample must have
  // len(dim_mult) - 1 entries, latents_mean and latents_std z_dim each), or a zero standard deviation.
  static AutoencoderKLQwenImageConfig from_json(const JsonConfig& json);
  static AutoencoderKLQwenImageConfig from_file(const std::filesystem::path& file);
  // The checks from_json makes, for a config built in code; `source` names it in the error.
  void validate(const std::string& source) const;
};

}  // namespace diffuse
