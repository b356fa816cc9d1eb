#pragma once
// Typed views of the config files in a diffusers pipeline folder. Each struct holds diffusers' (or
// transformers') defaults, so a key absent from the file keeps the value the Python class would use.
// `from_file` reads one file; a key of the wrong type is an error naming the key and the file.

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/io/json_config.hpp"

namespace diffuse {

// model_index.json: which class each component folder holds.
struct ModelIndex {
  struct Component {
    std::string library;     // "diffusers" or "transformers"
    std::string class_name;  // "FluxTransformer2DModel", "CLIPTextModel", ...
  };
  std::string class_name;  // the pipeline class, "FluxPipeline"
  std::string diffusers_version;
  std::map<std::string, Component> components;  // entries given as [null, null] are left out
  // Scalar entries, as JSON text: arguments of the pipeline class (e.g. requires_safety_checker).
  std::map<std::string, std::string> arguments;

  static ModelIndex from_file(const std::filesystem::path& file);
};

// transformers' CLIPTextConfig.
// A config's count of repeated blocks, and where block i's weights live (names starting "<prefix>i."),
// so that a count its checkpoint does not hold is refused before any block is built.
struct BlockCount {
  std::string key;  // the config key, e.g. "num_layers"
  int64_t count;
  std::string prefix;  // e.g. "transformer_blocks."
};

struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t projection_dim = 512;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 49406;
  int64_t eos_token_id = 49407;

  static ClipTextConfig from_json(const JsonConfig& json);
  static ClipTextConfig from_file(const std::filesystem::path& file);
  std::vector<BlockCount> block_counts() const;
};

// transformers' T5Config, encoder side.
struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 512;
  int64_t d_kv = 64;
  int64_t d_ff = 2048;
  int64_t num_layers = 6;
  int64_t num_heads = 8;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  std::string feed_forward_proj = "relu";
  // Derived from feed_forward_proj as transformers does: "gated-gelu" -> gated, "gelu_new".
  bool is_gated_act = false;
  std::string dense_act_fn = "relu";
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 1;

  static T5Config from_json(const JsonConfig& json);
  static T5Config from_file(const std::filesystem::path& file);
  std::vector<BlockCount> block_counts() const;
};

// diffusers' FluxTransformer2DModel.
struct FluxTransformerConfig {
  int64_t patch_size = 1;
  int64_t in_channels = 64;
  int64_t out_channels = 64;  // null in the file means in_channels
  int64_t num_layers = 19;
  int64_t num_single_layers = 38;
  int64_t attention_head_dim = 128;
  int64_t num_attention_heads = 24;
  int64_t joint_attention_dim = 4096;
  int64_t pooled_projection_dim = 768;
  bool guidance_embeds = false;
  std::vector<int64_t> axes_dims_rope = {16, 56, 56};

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  static FluxTransformerConfig from_json(const JsonConfig& json);
  static FluxTransformerConfig from_file(const std::filesystem::path& file);
  std::vector<BlockCount> block_counts() const;
};

// diffusers' AutoencoderKL.
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 1;
  std::string act_fn = "silu";
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 32;
  double scaling_factor = 0.18215;
  std::optional<double> shift_factor;  // FLUX.1: 0.1159; null for SD
  bool force_upcast = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  // 2 ** (len(block_out_channels) - 1), as the pipelines compute it.
  int64_t vae_scale_factor() const { return int64_t{1} << (block_out_channels.size() - 1); }
  static AutoencoderKLConfig from_json(const JsonConfig& json);
  static AutoencoderKLConfig from_file(const std::filesystem::path& file);
};

}  // namespace diffuse
