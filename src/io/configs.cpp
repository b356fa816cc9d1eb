#include "diffuse/io/configs.hpp"

#include <fstream>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "io/json_text.hpp"

namespace diffuse {

ModelIndex ModelIndex::from_file(const std::filesystem::path& file) {
  const JsonConfig json = JsonConfig::load(file);
  ModelIndex index;
  index.class_name = json.get_string("_class_name", "");
  index.diffusers_version = json.get_string("_diffusers_version", "");
  if (index.class_name.empty()) throw Error(file.string() + ": missing '_class_name' (not a model_index.json?)");
  // Components are the keys that do not start with '_', each [library, class] or [null, null]; a
  // boolean or number is an argument of the pipeline's constructor (SD's requires_safety_checker:
  // false). A string is taken for a mistyped component and refused.
  for (const std::string& key : json.keys()) {
    if (key.empty() || key[0] == '_') continue;
    const nlohmann::json entry = nlohmann::json::parse(json.dump(key));
    if (entry.is_null()) continue;
    if (entry.is_boolean() || entry.is_number()) {
      index.arguments[key] = entry.dump();
      continue;
    }
    if (!entry.is_array() || entry.size() != 2)
      throw Error(file.string() + ": key '" + key + "' should be [library, class], got " + json_for_message(entry));
    if (entry[0].is_null() && entry[1].is_null()) continue;
    if (!entry[0].is_string() || !entry[1].is_string())
      throw Error(file.string() + ": key '" + key + "' should be [library, class], got " + json_for_message(entry));
    index.components[key] = {entry[0].get<std::string>(), entry[1].get<std::string>()};
  }
  return index;
}

ClipTextConfig ClipTextConfig::from_json(const JsonConfig& json) {
  ClipTextConfig c;
  c.vocab_size = json.get_int("vocab_size", c.vocab_size);
  c.hidden_size = json.get_int("hidden_size", c.hidden_size);
  c.intermediate_size = json.get_int("intermediate_size", c.intermediate_size);
  c.projection_dim = json.get_int("projection_dim", c.projection_dim);
  c.num_hidden_layers = json.get_int("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = json.get_int("num_attention_heads", c.num_attention_heads);
  c.max_position_embeddings = json.get_int("max_position_embeddings", c.max_position_embeddings);
  c.hidden_act = json.get_string("hidden_act", c.hidden_act);
  c.layer_norm_eps = json.get_double("layer_norm_eps", c.layer_norm_eps);
  c.pad_token_id = json.get_int("pad_token_id", c.pad_token_id);
  c.bos_token_id = json.get_int("bos_token_id", c.bos_token_id);
  c.eos_token_id = json.get_int("eos_token_id", c.eos_token_id);
  return c;
}
ClipTextConfig ClipTextConfig::from_file(const std::filesystem::path& file) {
  return from_json(JsonConfig::load(file));
}

T5Config T5Config::from_json(const JsonConfig& json) {
  T5Config c;
  c.vocab_size = json.get_int("vocab_size", c.vocab_size);
  c.d_model = json.get_int("d_model", c.d_model);
  c.d_kv = json.get_int("d_kv", c.d_kv);
  c.d_ff = json.get_int("d_ff", c.d_ff);
  c.num_layers = json.get_int("num_layers", c.num_layers);
  c.num_heads = json.get_int("num_heads", c.num_heads);
  c.relative_attention_num_buckets =
      json.get_int("relative_attention_num_buckets", c.relative_attention_num_buckets);
  c.relative_attention_max_distance =
      json.get_int("relative_attention_max_distance", c.relative_attention_max_distance);
  c.layer_norm_epsilon = json.get_double("layer_norm_epsilon", c.layer_norm_epsilon);
  c.feed_forward_proj = json.get_string("feed_forward_proj", c.feed_forward_proj);
  c.pad_token_id = json.get_int("pad_token_id", c.pad_token_id);
  c.eos_token_id = json.get_int("eos_token_id", c.eos_token_id);
  // transformers: "gated-gelu" means a gated feed-forward with gelu_new; "relu" a plain one.
  const std::string& proj = c.feed_forward_proj;
  const auto dash = proj.rfind('-');
  c.is_gated_act = dash != std::string::npos && proj.substr(0, dash) == "gated";
  c.dense_act_fn = dash == std::string::npos ? proj : proj.substr(dash + 1);
  if ((dash != std::string::npos && !c.is_gated_act) || proj.find('-') != dash)
    throw Error(json.source() + ": key 'feed_forward_proj' should be 'ACT' or 'gated-ACT', got '" + proj + "'");
  if (c.feed_forward_proj == "gated-gelu") c.dense_act_fn = "gelu_new";
  return c;
}
T5Config T5Config::from_file(const std::filesystem::path& file) { return from_json(JsonConfig::load(file)); }

FluxTransformerConfig FluxTransformerConfig::from_json(const JsonConfig& json) {
  FluxTransformerConfig c;
  c.patch_size = json.get_int("patch_size", c.patch_size);
  c.in_channels = json.get_int("in_channels", c.in_channels);
  c.out_channels = json.get_int("out_channels", c.in_channels);
  c.num_layers = json.get_int("num_layers", c.num_layers);
  c.num_single_layers = json.get_int("num_single_layers", c.num_single_layers);
  c.attention_head_dim = json.get_int("attention_head_dim", c.attention_head_dim);
  c.num_attention_heads = json.get_int("num_attention_heads", c.num_attention_heads);
  c.joint_attention_dim = json.get_int("joint_attention_dim", c.joint_attention_dim);
  c.pooled_projection_dim = json.get_int("pooled_projection_dim", c.pooled_projection_dim);
  c.guidance_embeds = json.get_bool("guidance_embeds", c.guidance_embeds);
  c.axes_dims_rope = json.get_int_list("axes_dims_rope", c.axes_dims_rope);
  // Sizes a real model could have; anything beyond is a damaged file (and would overflow products).
  constexpr int64_t kMaxSize = int64_t{1} << 24;
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"attention_head_dim", c.attention_head_dim},
                                   {"num_attention_heads", c.num_attention_heads}, {"num_layers", c.num_layers},
                                   {"num_single_layers", c.num_single_layers}, {"in_channels", c.in_channels},
                                   {"patch_size", c.patch_size}, {"joint_attention_dim", c.joint_attention_dim},
                                   {"pooled_projection_dim", c.pooled_projection_dim}})
    if (value < 0 || value > kMaxSize)
      throw Error(json.source() + ": key '" + key + "' is " + std::to_string(value) + ", outside [0, " +
                  std::to_string(kMaxSize) + "]");
  int64_t rope_dim = 0;
  for (int64_t d : c.axes_dims_rope) {
    if (d < 0 || d > kMaxSize) throw Error(json.source() + ": axes_dims_rope entry " + std::to_string(d) + " is out of range");
    rope_dim += d;
  }
  if (rope_dim != c.attention_head_dim)
    throw Error(json.source() + ": axes_dims_rope must sum to attention_head_dim (" +
                std::to_string(rope_dim) + " != " + std::to_string(c.attention_head_dim) + ")");
  return c;
}
FluxTransformerConfig FluxTransformerConfig::from_file(const std::filesystem::path& file) {
  return from_json(JsonConfig::load(file));
}

AutoencoderKLConfig AutoencoderKLConfig::from_json(const JsonConfig& json) {
  AutoencoderKLConfig c;
  c.in_channels = json.get_int("in_channels", c.in_channels);
  c.out_channels = json.get_int("out_channels", c.out_channels);
  c.down_block_types = json.get_string_list("down_block_types", c.down_block_types);
  c.up_block_types = json.get_string_list("up_block_types", c.up_block_types);
  c.block_out_channels = json.get_int_list("block_out_channels", c.block_out_channels);
  c.layers_per_block = json.get_int("layers_per_block", c.layers_per_block);
  c.act_fn = json.get_string("act_fn", c.act_fn);
  c.latent_channels = json.get_int("latent_channels", c.latent_channels);
  c.norm_num_groups = json.get_int("norm_num_groups", c.norm_num_groups);
  c.sample_size = json.get_int("sample_size", c.sample_size);
  c.scaling_factor = json.get_double("scaling_factor", c.scaling_factor);
  c.shift_factor = json.get_optional_double("shift_factor");
  c.force_upcast = json.get_bool("force_upcast", c.force_upcast);
  c.use_quant_conv = json.get_bool("use_quant_conv", c.use_quant_conv);
  c.use_post_quant_conv = json.get_bool("use_post_quant_conv", c.use_post_quant_conv);
  c.mid_block_add_attention = json.get_bool("mid_block_add_attention", c.mid_block_add_attention);
  if (c.block_out_channels.empty() || c.block_out_channels.size() > 16)
    throw Error(json.source() + ": key 'block_out_channels' must have 1 to 16 levels, got " +
                std::to_string(c.block_out_channels.size()));
  if (c.down_block_types.size() != c.block_out_channels.size() ||
      c.up_block_types.size() != c.block_out_channels.size())
    throw Error(json.source() + ": down_block_types, up_block_types and block_out_channels differ in length");
  return c;
}
AutoencoderKLConfig AutoencoderKLConfig::from_file(const std::filesystem::path& file) {
  return from_json(JsonConfig::load(file));
}

std::vector<BlockCount> ClipTextConfig::block_counts() const {
  return {{"num_hidden_layers", num_hidden_layers, "encoder.layers."}};
}

std::vector<BlockCount> T5Config::block_counts() const { return {{"num_layers", num_layers, "encoder.block."}}; }

std::vector<BlockCount> FluxTransformerConfig::block_counts() const {
  return {{"num_layers", num_layers, "transformer_blocks."},
          {"num_single_layers", num_single_layers, "single_transformer_blocks."}};
}

}  // namespace diffuse
