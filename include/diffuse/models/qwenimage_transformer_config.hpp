#pragma once
// diffusers' QwenImageTransformer2DModel config (transformer/config.json), with diffusers' defaults,
// which are Qwen-Image's 20B layout: 60 dual-stream blocks of 24 heads x 128 channels over 3584-wide
// Qwen2.5-VL text features, 2x2-packed 16-channel latents (in_channels 64, out_channels 16).
//
// The variants that later Qwen-Image models switch on are refused when the file is read, naming the
// key: zero_cond_t (a second modulation for condition images), use_additional_t_cond (an extra
// embedding added to the timestep's) and use_layer3d_rope (the layered model's rotary embedding).

#include <cstdint>
#include <filesystem>
#include <vector>

#include "diffuse/io/configs.hpp"
#include "diffuse/io/json_config.hpp"

namespace diffuse {

struct QwenImageTransformerConfig {
  int64_t patch_size = 2;
  int64_t in_channels = 64;
  int64_t out_channels = 16;  // null in the file means in_channels
  int64_t num_layers = 60;
  int64_t attention_head_dim = 128;
  int64_t num_attention_heads = 24;
  int64_t joint_attention_dim = 3584;
  // Read and kept, but it changes nothing: diffusers builds no guidance embedder for it either.
  bool guidance_embeds = false;
  // Rotary channels per axis (frame, height, width); they sum to attention_head_dim.
  std::vector<int64_t> axes_dims_rope = {16, 56, 56};

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  // Channels of one output token: patch_size^2 * out_channels.
  int64_t output_channels() const { return patch_size * patch_size * out_channels; }

  // Reads config.json. Throws diffuse::Error naming the file and the key for a value of the wrong type,
  // a size out of range, rotary axes that do not fit the heads, or a variant that is not implemented.
  static QwenImageTransformerConfig from_json(const JsonConfig& json);
  static QwenImageTransformerConfig from_file(const std::filesystem::path& file);
  // Where the transformer blocks' weights live, checked against a checkpoint before building.
  std::vector<BlockCount> block_counts() const;
};

}  // namespace diffuse
