#include "diffuse/models/qwenimage_transformer_config.hpp"

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "diffuse/error.hpp"

namespace diffuse {
namespace {

// Sizes a real model could have; anything beyond is a damaged file (and would overflow products).
constexpr int64_t kMaxSize = int64_t{1} << 24;

[[noreturn]] void fail(const JsonConfig& json, const std::string& key, const std::string& what) {
  throw Error(json.source() + ": key '" + key + "' " + what);
}

}  // namespace

QwenImageTransformerConfig QwenImageTransformerConfig::from_json(const JsonConfig& json) {
  QwenImageTransformerConfig c;
  const std::string class_name = json.get_string("_class_name", "QwenImageTransformer2DModel");
  if (class_name != "QwenImageTransformer2DModel")
    throw Error(json.source() + ": _class_name is '" + class_name + "', not QwenImageTransformer2DModel");
  c.patch_size = json.get_int("patch_size", c.patch_size);
  c.in_channels = json.get_int("in_channels", c.in_channels);
  c.out_channels = json.get_int("out_channels", c.out_channels);
  const std::vector<std::string> keys = json.keys();
  if (std::find(keys.begin(), keys.end(), "out_channels") != keys.end() && !json.has("out_channels"))
    c.out_channels = c.in_channels;  // null: diffusers' `out_channels or in_channels`
  c.num_layers = json.get_int("num_layers", c.num_layers);
  c.attention_head_dim = json.get_int("attention_head_dim", c.attention_head_dim);
  c.num_attention_heads = json.get_int("num_attention_heads", c.num_attention_heads);
  c.joint_attention_dim = json.get_int("joint_attention_dim", c.joint_attention_dim);
  c.guidance_embeds = json.get_bool("guidance_embeds", c.guidance_embeds);
  c.axes_dims_rope = json.get_int_list("axes_dims_rope", c.axes_dims_rope);

  for (const char* key : {"zero_cond_t", "use_additional_t_cond", "use_layer3d_rope"})
    if (json.get_bool(key, false))
      fail(json, key, "is true: that Qwen-Image variant is not supported (only false)");

  for (const auto& [key, value, low] :
       {std::tuple<const char*, int64_t, int64_t>{"patch_size", c.patch_size, 1}, {"in_channels", c.in_channels, 1},
        {"out_channels", c.out_channels, 1}, {"num_layers", c.num_layers, 0},
        {"attention_head_dim", c.attention_head_dim, 2}, {"num_attention_heads", c.num_attention_heads, 1},
        {"joint_attention_dim", c.joint_attention_dim, 1}})
    if (value < low || value > kMaxSize)
      fail(json, key,
           "is " + std::to_string(value) + ", outside [" + std::to_string(low) + ", " + std::to_string(kMaxSize) + "]");
  if (c.inner_dim() > kMaxSize)
    fail(json, "num_attention_heads", "times attention_head_dim is " + std::to_string(c.inner_dim()) + ", too large");
  if (c.axes_dims_rope.size() != 3)
    fail(json, "axes_dims_rope", "must have 3 entries (frame, height, width), got " +
                                     std::to_string(c.axes_dims_rope.size()));
  int64_t rope_dim = 0;
  for (int64_t d : c.axes_dims_rope) {
    if (d < 2 || d > kMaxSize || d % 2 != 0)
      fail(json, "axes_dims_rope", "has entry " + std::to_string(d) + ": each must be even and positive");
    rope_dim += d;
  }
  if (rope_dim != c.attention_head_dim)
    fail(json, "axes_dims_rope",
         "must sum to attention_head_dim (" + std::to_string(rope_dim) + " != " + std::to_string(c.attention_head_dim) +
             ")");
  return c;
}

QwenImageTransformerConfig QwenImageTransformerConfig::from_file(const std::filesystem::path& file) {
  return from_json(JsonConfig::load(file));
}

std::vector<BlockCount> QwenImageTransformerConfig::block_counts() const {
  return {{"num_layers", num_layers, "transformer_blocks."}};
}

}  // namespace diffuse
