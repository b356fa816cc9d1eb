#pragma once
// diffusers' UNet2DConditionModel config (unet/config.json) as Stable Diffusion 1.x and 2.x use it,
// with diffusers' defaults (which are SD 1.x's layout at width 320 with 1280-wide cross-attention).
//
// Keys that diffusers accepts as a number or as a list of one value per down block
// (attention_head_dim, cross_attention_dim, layers_per_block, transformer_layers_per_block) are read as
// either and held here one per down block; up blocks use them reversed, the middle block the last.
//
// Note diffusers' legacy naming: `attention_head_dim` is the number of attention heads
// (num_attention_heads = num_attention_heads or attention_head_dim); SD 1.5 has 8 heads in every block,
// so heads of 40, 80 and 160 channels; SD 2.x lists [5, 10, 20, 20], heads of 64 channels.
//
// The UNet variants SD does not use are refused when the file is read, naming the key and its value:
// class and addition embeddings (SDXL, Kandinsky, unCLIP), encoder_hid_proj, Fourier time embeddings,
// GLIGEN and other attention types, dual or only-cross attention, scale-shift resnets, other block types.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "diffuse/io/configs.hpp"
#include "diffuse/io/json_config.hpp"

namespace diffuse {

struct UNet2DConditionConfig {
  int64_t sample_size = 64;  // latent height and width the model was trained at (pipelines: * 8 for pixels)
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  bool center_input_sample = false;  // sample -> 2 * sample - 1 first
  // time_proj: Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift).
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                               "DownBlock2D"};
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";
  std::vector<std::string> up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                             "CrossAttnUpBlock2D"};
  std::vector<int64_t> block_out_channels = {320, 640, 1280, 1280};
  // One per down block (see above).
  std::vector<int64_t> layers_per_block = {2, 2, 2, 2};
  std::vector<int64_t> transformer_layers_per_block = {1, 1, 1, 1};
  std::vector<int64_t> num_attention_heads = {8, 8, 8, 8};  // the file's attention_head_dim
  std::vector<int64_t> cross_attention_dim = {1280, 1280, 1280, 1280};
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1.0;   // output_scale_factor of the middle block's resnets
  double resnet_out_scale_factor = 1.0;  // of the down and up blocks' resnets
  std::string act_fn = "silu";
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool use_linear_projection = false;  // SD 2.x: true
  // SD 2.1 sets it (for float16 on the classic attention processor); scores and softmax are computed
  // in float32 here either way, so it changes nothing.
  bool upcast_attention = false;
  int64_t time_embedding_dim = 0;  // 0: 4 * block_out_channels[0]
  int64_t conv_in_kernel = 3;
  int64_t conv_out_kernel = 3;

  size_t num_blocks() const { return block_out_channels.size(); }
  // The width of the time embedding every resnet takes.
  int64_t time_embed_dim() const { return time_embedding_dim > 0 ? time_embedding_dim : 4 * block_out_channels[0]; }

  // Reads config.json. Throws diffuse::Error naming the file and the key for a value of the wrong type,
  // a list of the wrong length, a size out of range, and a variant that is not implemented.
  static UNet2DConditionConfig from_json(const JsonConfig& json);
  static UNet2DConditionConfig from_file(const std::filesystem::path& file);
  // Checks the fields against each other (list lengths, channels that split into heads and groups,
  // block types); `source` names the config in the error. from_json calls it; the model does too.
  void validate(const std::string& source) const;
  // Resnets, attentions and transformer layers per block, with where their weights live
  // ("down_blocks.1.attentions.0.transformer_blocks."), checked against a checkpoint before building.
  std::vector<BlockCount> block_counts() const;
};

}  // namespace diffuse
