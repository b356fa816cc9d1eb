#include "diffuse/models/unet_2d_condition_config.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/models/layers.hpp"
#include "io/json_text.hpp"

namespace diffuse {
namespace {

// Sizes a real model could have; anything beyond is a damaged file (and would overflow products).
constexpr int64_t kMaxSize = int64_t{1} << 24;
constexpr size_t kMaxLevels = 16;

[[noreturn]] void fail(const std::string& source, const std::string& key, const std::string& what) {
  throw Error(source + ": key '" + key + "' " + what);
}

nlohmann::json value_of(const JsonConfig& json, const std::string& key) {
  return nlohmann::json::parse(json.dump(key));
}

// diffusers strips this prefix from block type names ("UNetResDownBlock2D" is DownBlock2D).
std::string block_type(std::string name) { return name.rfind("UNetRes", 0) == 0 ? name.substr(7) : name; }

// A key diffusers reads as a number or as a list of one number per down block, as a list of `blocks`.
std::vector<int64_t> per_block(const JsonConfig& json, const std::string& key, size_t blocks, int64_t fallback) {
  if (!json.has(key)) return std::vector<int64_t>(blocks, fallback);
  const nlohmann::json value = value_of(json, key);
  if (value.is_number_integer()) return std::vector<int64_t>(blocks, value.get<int64_t>());
  if (!value.is_array())
    fail(json.source(), key, "should be an integer or a list of integers, got " + json_for_message(value));
  std::vector<int64_t> out;
  for (const auto& item : value) {
    if (item.is_array())
      fail(json.source(), key, "is a list of lists (an asymmetric UNet, as SDXL refiners have): not supported");
    if (!item.is_number_integer())
      fail(json.source(), key, "should be an integer or a list of integers, got " + json_for_message(value));
    out.push_back(item.get<int64_t>());
  }
  if (out.size() != blocks)
    fail(json.source(), key,
         "has " + std::to_string(out.size()) + " entries for " + std::to_string(blocks) + " down blocks");
  return out;
}

// Present with the value JSON null (as opposed to absent: diffusers' default then).
bool is_null(const JsonConfig& json, const std::string& key) {
  const std::vector<std::string> keys = json.keys();
  return std::find(keys.begin(), keys.end(), key) != keys.end() && !json.has(key);
}

// Keys whose every non-null value selects a part of UNet2DConditionModel that SD 1.x/2.x do not have.
void refuse_unless_null(const JsonConfig& json, const std::string& key, const std::string& what) {
  if (json.has(key))
    fail(json.source(), key,
         "is " + json_for_message(value_of(json, key)) + ": " + what +
             " is not supported (SD 1.x/2.x UNets have null here)");
}

void refuse_unless(const JsonConfig& json, bool supported, const std::string& key, const std::string& what) {
  if (!supported)
    fail(json.source(), key, "is " + json_for_message(value_of(json, key)) + ": " + what + " is not supported");
}

void check_range(const std::string& source, const std::string& key, int64_t value, int64_t low) {
  if (value < low || value > kMaxSize)
    fail(source, key,
         "is " + std::to_string(value) + ", outside [" + std::to_string(low) + ", " + std::to_string(kMaxSize) + "]");
}

}  // namespace

UNet2DConditionConfig UNet2DConditionConfig::from_json(const JsonConfig& json) {
  UNet2DConditionConfig c;
  const std::string class_name = json.get_string("_class_name", "UNet2DConditionModel");
  if (class_name != "UNet2DConditionModel")
    throw Error(json.source() + ": _class_name is '" + class_name + "', not UNet2DConditionModel");

  // Variants that are not implemented, refused by name before anything else is read.
  for (const char* key : {"class_embed_type", "num_class_embeds"}) refuse_unless_null(json, key, "a class embedding");
  refuse_unless_null(json, "addition_embed_type", "an addition embedding (SDXL's text_time, Kandinsky's)");
  for (const char* key : {"encoder_hid_dim", "encoder_hid_dim_type"})
    refuse_unless_null(json, key, "projecting encoder_hidden_states (encoder_hid_proj)");
  refuse_unless_null(json, "time_cond_proj_dim", "a timestep condition projection (cond_proj)");
  refuse_unless_null(json, "time_embedding_act_fn", "an activation after the time embedding");
  refuse_unless_null(json, "timestep_post_act", "an activation inside the time embedding");
  refuse_unless_null(json, "reverse_transformer_layers_per_block", "an asymmetric UNet");
  // diffusers itself refuses it (its attention_head_dim means the heads; see the header).
  refuse_unless_null(json, "num_attention_heads",
                     "num_attention_heads (diffusers reads the heads from attention_head_dim)");
  refuse_unless(json, json.get_string("time_embedding_type", "positional") == "positional", "time_embedding_type",
                "a time embedding other than \"positional\"");
  refuse_unless(json, json.get_string("attention_type", "default") == "default", "attention_type",
                "an attention type other than \"default\" (GLIGEN)");
  refuse_unless(json, json.get_string("resnet_time_scale_shift", "default") == "default", "resnet_time_scale_shift",
                "a resnet time embedding other than \"default\"");
  refuse_unless(json, !json.get_bool("resnet_skip_time_act", false), "resnet_skip_time_act",
                "skipping the resnets' time activation");
  refuse_unless(json, !json.get_bool("dual_cross_attention", false), "dual_cross_attention", "dual cross-attention");
  refuse_unless(json, !json.get_bool("class_embeddings_concat", false), "class_embeddings_concat",
                "concatenated class embeddings");
  if (json.has("only_cross_attention")) {
    const nlohmann::json value = value_of(json, "only_cross_attention");
    bool any = value.is_boolean() && value.get<bool>();
    if (value.is_array())
      for (const auto& item : value) any = any || !item.is_boolean() || item.get<bool>();
    if (!value.is_boolean() && !value.is_array())
      fail(json.source(), "only_cross_attention",
           "should be true, false or a list of them, got " + json_for_message(value));
    refuse_unless(json, !any, "only_cross_attention", "cross-attention without self-attention");
  }
  if (is_null(json, "mid_block_type"))
    fail(json.source(), "mid_block_type", "is null: a UNet without a middle block is not supported");
  if (is_null(json, "norm_num_groups"))
    fail(json.source(), "norm_num_groups", "is null: a UNet without group norms is not supported");

  if (json.has("sample_size")) {
    const nlohmann::json value = value_of(json, "sample_size");
    if (value.is_number_integer()) {
      c.sample_size = value.get<int64_t>();
    } else if (value.is_array() && value.size() == 2 && value[0].is_number_integer() && value[0] == value[1]) {
      c.sample_size = value[0].get<int64_t>();
    } else {
      fail(json.source(), "sample_size", "should be an integer (or [n, n]), got " + json_for_message(value));
    }
  }
  c.in_channels = json.get_int("in_channels", c.in_channels);
  c.out_channels = json.get_int("out_channels", c.out_channels);
  c.center_input_sample = json.get_bool("center_input_sample", c.center_input_sample);
  c.flip_sin_to_cos = json.get_bool("flip_sin_to_cos", c.flip_sin_to_cos);
  c.freq_shift = json.get_double("freq_shift", c.freq_shift);
  c.down_block_types = json.get_string_list("down_block_types", c.down_block_types);
  c.mid_block_type = json.get_string("mid_block_type", c.mid_block_type);
  c.up_block_types = json.get_string_list("up_block_types", c.up_block_types);
  c.block_out_channels = json.get_int_list("block_out_channels", c.block_out_channels);
  for (auto& type : c.down_block_types) type = block_type(type);
  for (auto& type : c.up_block_types) type = block_type(type);
  const size_t blocks = c.block_out_channels.size();
  if (blocks == 0 || blocks > kMaxLevels)
    fail(json.source(), "block_out_channels",
         "must have 1 to " + std::to_string(kMaxLevels) + " levels, got " + std::to_string(blocks));
  c.layers_per_block = per_block(json, "layers_per_block", blocks, 2);
  c.transformer_layers_per_block = per_block(json, "transformer_layers_per_block", blocks, 1);
  c.num_attention_heads = per_block(json, "attention_head_dim", blocks, 8);
  c.cross_attention_dim = per_block(json, "cross_attention_dim", blocks, 1280);
  c.downsample_padding = json.get_int("downsample_padding", c.downsample_padding);
  c.mid_block_scale_factor = json.get_double("mid_block_scale_factor", c.mid_block_scale_factor);
  c.resnet_out_scale_factor = json.get_double("resnet_out_scale_factor", c.resnet_out_scale_factor);
  c.act_fn = json.get_string("act_fn", c.act_fn);
  c.norm_num_groups = json.get_int("norm_num_groups", c.norm_num_groups);
  c.norm_eps = json.get_double("norm_eps", c.norm_eps);
  c.use_linear_projection = json.get_bool("use_linear_projection", c.use_linear_projection);
  c.upcast_attention = json.get_bool("upcast_attention", c.upcast_attention);
  c.time_embedding_dim = json.get_int("time_embedding_dim", 0);
  if (json.has("time_embedding_dim")) check_range(json.source(), "time_embedding_dim", c.time_embedding_dim, 1);
  c.conv_in_kernel = json.get_int("conv_in_kernel", c.conv_in_kernel);
  c.conv_out_kernel = json.get_int("conv_out_kernel", c.conv_out_kernel);
  c.validate(json.source());
  return c;
}

UNet2DConditionConfig UNet2DConditionConfig::from_file(const std::filesystem::path& file) {
  return from_json(JsonConfig::load(file));
}

void UNet2DConditionConfig::validate(const std::string& source) const {
  const size_t n = block_out_channels.size();
  if (n == 0 || n > kMaxLevels)
    fail(source, "block_out_channels",
         "must have 1 to " + std::to_string(kMaxLevels) + " levels, got " + std::to_string(n));
  auto check_length = [&](const char* key, size_t size) {
    if (size != n)
      fail(source, key, "has " + std::to_string(size) + " entries but block_out_channels has " + std::to_string(n));
  };
  check_length("down_block_types", down_block_types.size());
  check_length("up_block_types", up_block_types.size());
  check_length("layers_per_block", layers_per_block.size());
  check_length("transformer_layers_per_block", transformer_layers_per_block.size());
  check_length("attention_head_dim", num_attention_heads.size());
  check_length("cross_attention_dim", cross_attention_dim.size());

  check_range(source, "in_channels", in_channels, 1);
  check_range(source, "out_channels", out_channels, 1);
  check_range(source, "norm_num_groups", norm_num_groups, 1);
  check_range(source, "downsample_padding", downsample_padding, 0);
  if (time_embedding_dim != 0) check_range(source, "time_embedding_dim", time_embedding_dim, 1);
  for (const auto& [key, kernel] :
       {std::pair<const char*, int64_t>{"conv_in_kernel", conv_in_kernel}, {"conv_out_kernel", conv_out_kernel}}) {
    if (kernel < 1 || kernel > 15 || kernel % 2 == 0)
      fail(source, key, "is " + std::to_string(kernel) + ": kernels are odd, 1 to 15");
  }
  for (size_t i = 0; i < n; ++i) {
    check_range(source, "block_out_channels", block_out_channels[i], 1);
    check_range(source, "layers_per_block", layers_per_block[i], 1);
    check_range(source, "transformer_layers_per_block", transformer_layers_per_block[i], 1);
    check_range(source, "attention_head_dim", num_attention_heads[i], 1);
    check_range(source, "cross_attention_dim", cross_attention_dim[i], 1);
    if (block_out_channels[i] % norm_num_groups != 0)
      fail(source, "block_out_channels",
           "entry " + std::to_string(block_out_channels[i]) + " does not split into norm_num_groups " +
               std::to_string(norm_num_groups) + " groups");
  }
  if (mid_block_type != "UNetMidBlock2DCrossAttn")
    fail(source, "mid_block_type", "is '" + mid_block_type + "': only UNetMidBlock2DCrossAttn is supported");
  // The heads split the channels of each block with attention: down block i (heads[i]), up block i
  // (heads reversed, over the reversed channels), the middle block (the last).
  auto check_heads = [&](const char* where, size_t index, int64_t channels, int64_t heads) {
    if (channels % heads != 0)
      fail(source, "attention_head_dim",
           "gives " + std::to_string(heads) + " heads, which do not split the " + std::to_string(channels) +
               " channels of " + where + " " + std::to_string(index));
  };
  for (size_t i = 0; i < n; ++i) {
    const std::string& down = down_block_types[i];
    if (down != "CrossAttnDownBlock2D" && down != "DownBlock2D")
      fail(source, "down_block_types", "has '" + down + "': only CrossAttnDownBlock2D and DownBlock2D are supported");
    if (down == "CrossAttnDownBlock2D") check_heads("down block", i, block_out_channels[i], num_attention_heads[i]);
    const std::string& up = up_block_types[i];
    if (up != "CrossAttnUpBlock2D" && up != "UpBlock2D")
      fail(source, "up_block_types", "has '" + up + "': only CrossAttnUpBlock2D and UpBlock2D are supported");
    if (up == "CrossAttnUpBlock2D")
      check_heads("up block", i, block_out_channels[n - 1 - i], num_attention_heads[n - 1 - i]);
  }
  check_heads("the middle block", 0, block_out_channels.back(), num_attention_heads.back());
  try {
    activation(at::zeros({1}), act_fn);
  } catch (const Error&) {
    fail(source, "act_fn", "is '" + act_fn + "', not an activation diffuse knows");
  }
  if (mid_block_scale_factor == 0.0) fail(source, "mid_block_scale_factor", "must not be 0 (the resnets divide by it)");
  if (resnet_out_scale_factor == 0.0)
    fail(source, "resnet_out_scale_factor", "must not be 0 (the resnets divide by it)");
}

std::vector<BlockCount> UNet2DConditionConfig::block_counts() const {
  const size_t n = block_out_channels.size();
  std::vector<BlockCount> counts = {{"down_block_types", static_cast<int64_t>(n), "down_blocks."},
                                    {"up_block_types", static_cast<int64_t>(n), "up_blocks."}};
  // The resnets and the transformers (one per resnet in a cross-attention block) of one block.
  auto add_block = [&](const std::string& prefix, const char* layers_key, int64_t layers, bool cross,
                       int64_t transformer_layers) {
    counts.push_back({layers_key, layers, prefix + "resnets."});
    if (!cross) return;  // attentions in a block without them are refused by name when the weights load
    counts.push_back({layers_key, layers, prefix + "attentions."});
    for (int64_t j = 0; j < layers; ++j)
      counts.push_back({"transformer_layers_per_block", transformer_layers,
                        prefix + "attentions." + std::to_string(j) + ".transformer_blocks."});
  };
  for (size_t i = 0; i < n; ++i)
    add_block("down_blocks." + std::to_string(i) + ".", "layers_per_block", layers_per_block[i],
              down_block_types[i] == "CrossAttnDownBlock2D", transformer_layers_per_block[i]);
  counts.push_back({"transformer_layers_per_block", transformer_layers_per_block.back(),
                    "mid_block.attentions.0.transformer_blocks."});
  for (size_t i = 0; i < n; ++i)
    add_block("up_blocks." + std::to_string(i) + ".", "layers_per_block + 1 (up blocks)",
              layers_per_block[n - 1 - i] + 1, up_block_types[i] == "CrossAttnUpBlock2D",
              transformer_layers_per_block[n - 1 - i]);
  return counts;
}

}  // namespace diffuse
