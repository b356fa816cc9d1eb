#pragma once
// The language-model settings of transformers' Qwen2_5_VLConfig (a Qwen-Image pipeline's
// text_encoder/config.json), which is all the text encoder needs.
//
// transformers 5 saves them nested under "text_config", with the rotary settings in "rope_parameters"
// ({"rope_type": "default", "rope_theta": ..., "mrope_section": [t, h, w]}); transformers 4.x saved
// them at the top level (too), with "rope_scaling" ({"type": "mrope" or "default", "mrope_section": ...})
// and "rope_theta" beside it. Each key is read from text_config when that holds it, else from the top
// level. The vision settings are not read.
//
// Sizes have no defaults: a key that is missing, or out of range, or inconsistent with the others
// (hidden_size not a multiple of num_attention_heads, mrope_section not covering half a head), is a
// diffuse::Error naming the file and the key. Variants this model does not implement (another rope type,
// sliding-window layers) are refused the same way.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "diffuse/io/configs.hpp"
#include "diffuse/io/json_config.hpp"

namespace diffuse {

struct Qwen2_5_VLTextConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // grouped-query attention: each k/v head serves heads / kv_heads queries
  int64_t max_position_embeddings = 32768;
  std::string hidden_act = "silu";
  double rms_norm_eps = 1e-6;
  double rope_theta = 1000000.0;
  // Rotary frequencies per position axis (temporal, height, width), in pairs of channels; they sum to
  // head_dim / 2. Text tokens have the same position on all three axes.
  std::vector<int64_t> mrope_section;
  // "text_config." when the settings were nested (for messages), else "".
  std::string key_prefix;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }

  // Reads config.json. Throws diffuse::Error naming the file and the key (see above).
  static Qwen2_5_VLTextConfig from_json(const JsonConfig& json);
  static Qwen2_5_VLTextConfig from_file(const std::filesystem::path& file);
  // The decoder layers, whose weights are "model.layers.<i>.", checked against a checkpoint before
  // the model is built.
  std::vector<BlockCount> block_counts() const;
};

}  // namespace diffuse
