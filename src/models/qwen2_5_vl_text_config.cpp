#include "diffuse/models/qwen2_5_vl_text_config.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "diffuse/error.hpp"
#include "diffuse/models/layers.hpp"

namespace diffuse {
namespace {

// Sizes a real model could have; anything beyond is a damaged file (and would overflow products).
constexpr int64_t kMaxSize = int64_t{1} << 24;

[[noreturn]] void fail(const std::string& source, const std::string& key, const std::string& what) {
  throw Error(source + ": key '" + key + "' " + what);
}

}  // namespace

Qwen2_5_VLTextConfig Qwen2_5_VLTextConfig::from_json(const JsonConfig& json) {
  Qwen2_5_VLTextConfig c;
  const std::string& source = json.source();
  const std::optional<JsonConfig> nested = json.get_object("text_config");
  if (nested) c.key_prefix = "text_config.";
  // Where `key` is read: text_config when it holds it, else the top level (transformers 4.x files).
  auto from = [&](const std::string& key) -> const JsonConfig& {
    return nested && nested->has(key) ? *nested : json;
  };
  auto name = [&](const std::string& key) { return (nested && nested->has(key) ? c.key_prefix : "") + key; };

  auto size = [&](const std::string& key, std::optional<int64_t> fallback = std::nullopt) {
    std::optional<int64_t> value = from(key).get_optional_int(key);
    if (!value) value = fallback;
    if (!value) fail(source, c.key_prefix + key, "is missing");
    if (*value < 1 || *value > kMaxSize)
      fail(source, name(key), "is " + std::to_string(*value) + ", outside [1, " + std::to_string(kMaxSize) + "]");
    return *value;
  };
  c.vocab_size = size("vocab_size");
  c.hidden_size = size("hidden_size");
  c.intermediate_size = size("intermediate_size");
  c.num_hidden_layers = size("num_hidden_layers");
  c.num_attention_heads = size("num_attention_heads");
  // transformers: absent means one k/v head per query head (plain multi-head attention).
  c.num_key_value_heads = size("num_key_value_heads", c.num_attention_heads);
  c.max_position_embeddings = size("max_position_embeddings", c.max_position_embeddings);

  if (c.hidden_size % c.num_attention_heads != 0)
    fail(source, name("hidden_size"),
         "is " + std::to_string(c.hidden_size) + ", not a multiple of num_attention_heads " +
             std::to_string(c.num_attention_heads));
  if (c.head_dim() % 2 != 0)
    fail(source, name("num_attention_heads"),
         "gives heads of " + std::to_string(c.head_dim()) + " channels; rotary embeddings need an even number");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail(source, name("num_key_value_heads"),
         "is " + std::to_string(c.num_key_value_heads) + ", not a divisor of num_attention_heads " +
             std::to_string(c.num_attention_heads));

  c.rms_norm_eps = from("rms_norm_eps").get_double("rms_norm_eps", c.rms_norm_eps);
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps))
    fail(source, name("rms_norm_eps"), "is " + std::to_string(c.rms_norm_eps) + ", not a positive number");

  c.hidden_act = from("hidden_act").get_string("hidden_act", c.hidden_act);
  try {
    (void)activation(at::zeros({1}), c.hidden_act);
  } catch (const Error&) {
    fail(source, name("hidden_act"), "is '" + c.hidden_act + "', not an activation this library knows");
  }

  // Layers of another kind than full causal attention are not implemented.
  if (from("use_sliding_window").get_bool("use_sliding_window", false))
    fail(source, name("use_sliding_window"), "is true: sliding-window attention is not supported");
  for (const std::string& type : from("layer_types").get_string_list("layer_types", {}))
    if (type != "full_attention")
      fail(source, name("layer_types"), "lists '" + type + "': only full_attention layers are supported");

  // The rotary settings: transformers 5's rope_parameters, or transformers 4's rope_scaling.
  std::optional<JsonConfig> rope;
  std::string rope_key;
  for (const JsonConfig* level : {nested ? &*nested : nullptr, &json}) {
    if (level == nullptr || rope) continue;
    for (const char* key : {"rope_parameters", "rope_scaling"}) {
      if (rope) break;
      rope = level->get_object(key);
      if (rope) rope_key = (level == &json ? "" : c.key_prefix) + key;
    }
  }
  if (!rope) fail(source, c.key_prefix + "rope_parameters", "is missing (it holds mrope_section)");
  // transformers 4 wrote "type": "mrope" for this model, which it reads as the default rope.
  const std::string rope_type = rope->get_string("rope_type", rope->get_string("type", "default"));
  if (rope_type != "default" && rope_type != "mrope")
    fail(source, rope_key + ".rope_type", "is '" + rope_type + "': only the default rotary embedding is supported");
  c.mrope_section = rope->get_int_list("mrope_section", {});
  if (c.mrope_section.empty()) fail(source, rope_key + ".mrope_section", "is missing");
  int64_t covered = 0;
  for (int64_t section : c.mrope_section) {
    if (section < 0 || section > kMaxSize)
      fail(source, rope_key + ".mrope_section", "has an entry " + std::to_string(section) + " out of range");
    covered += section;
  }
  if (c.mrope_section.size() != 3 || covered != c.head_dim() / 2)
    fail(source, rope_key + ".mrope_section",
         "should be 3 entries (temporal, height, width) summing to head_dim / 2 = " +
             std::to_string(c.head_dim() / 2) + ", got " + std::to_string(c.mrope_section.size()) +
             " entries summing to " + std::to_string(covered));
  // rope_theta sits inside rope_parameters (transformers 5) or beside the other keys (transformers 4).
  if (std::optional<double> theta = rope->get_optional_double("rope_theta")) {
    c.rope_theta = *theta;
    if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
      fail(source, rope_key + ".rope_theta", "is " + std::to_string(c.rope_theta) + ", not a positive number");
  } else {
    c.rope_theta = from("rope_theta").get_double("rope_theta", c.rope_theta);
    if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
      fail(source, name("rope_theta"), "is " + std::to_string(c.rope_theta) + ", not a positive number");
  }
  return c;
}

Qwen2_5_VLTextConfig Qwen2_5_VLTextConfig::from_file(const std::filesystem::path& file) {
  return from_json(JsonConfig::load(file));
}

std::vector<BlockCount> Qwen2_5_VLTextConfig::block_counts() const {
  return {{key_prefix + "num_hidden_layers", num_hidden_layers, "model.layers."}};
}

}  // namespace diffuse
