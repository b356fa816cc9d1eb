#include "diffuse/models/autoencoder_kl_qwenimage_config.hpp"

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "diffuse/error.hpp"
#include "io/json_text.hpp"

namespace diffuse {
namespace {

// Sizes a real model could have; anything beyond is a damaged file (and would overflow products).
constexpr int64_t kMaxSize = int64_t{1} << 20;
constexpr size_t kMaxLevels = 16;
constexpr int64_t kMaxResBlocks = 64;

[[noreturn]] void fail(const std::string& source, const std::string& key, const std::string& what) {
  throw Error(source + ": key '" + key + "' " + what);
}

void check_range(const std::string& source, const std::string& key, int64_t value, int64_t low, int64_t high) {
  if (value < low || value > high)
    fail(source, key,
         "is " + std::to_string(value) + ", outside [" + std::to_string(low) + ", " + std::to_string(high) + "]");
}

// A list of booleans (diffusers' temperal_downsample); absent or null gives `fallback`.
std::vector<bool> bool_list(const JsonConfig& json, const std::string& key, std::vector<bool> fallback) {
  if (!json.has(key)) return fallback;
  const nlohmann::json& value = json.json().at(key);
  if (!value.is_array()) fail(json.source(), key, "should be a list of booleans, got " + json_for_message(value));
  std::vector<bool> out;
  for (const auto& item : value) {
    if (!item.is_boolean()) fail(json.source(), key, "should be a list of booleans, got " + json_for_message(value));
    out.push_back(item.get<bool>());
  }
  return out;
}

}  // namespace

AutoencoderKLQwenImageConfig AutoencoderKLQwenImageConfig::from_json(const JsonConfig& json) {
  AutoencoderKLQwenImageConfig c;
  const std::string class_name = json.get_string("_class_name", "AutoencoderKLQwenImage");
  if (class_name != "AutoencoderKLQwenImage")
    throw Error(json.source() + ": _class_name is '" + class_name + "', not AutoencoderKLQwenImage");
  c.base_dim = json.get_int("base_dim", c.base_dim);
  c.z_dim = json.get_int("z_dim", c.z_dim);
  c.dim_mult = json.get_int_list("dim_mult", c.dim_mult);
  c.num_res_blocks = json.get_int("num_res_blocks", c.num_res_blocks);
  c.attn_scales = json.get_optional_double_list("attn_scales").value_or(c.attn_scales);
  c.temperal_downsample = bool_list(json, "temperal_downsample", c.temperal_downsample);
  c.dropout = json.get_double("dropout", c.dropout);
  c.input_channels = json.get_int("input_channels", c.input_channels);
  c.latents_mean = json.get_optional_double_list("latents_mean").value_or(c.latents_mean);
  c.latents_std = json.get_optional_double_list("latents_std").value_or(c.latents_std);
  c.validate(json.source());
  return c;
}

AutoencoderKLQwenImageConfig AutoencoderKLQwenImageConfig::from_file(const std::filesystem::path& file) {
  return from_json(JsonConfig::load(file));
}

void AutoencoderKLQwenImageConfig::validate(const std::string& source) const {
  check_range(source, "base_dim", base_dim, 1, kMaxSize);
  check_range(source, "z_dim", z_dim, 1, kMaxSize);
  check_range(source, "num_res_blocks", num_res_blocks, 1, kMaxResBlocks);
  check_range(source, "input_channels", input_channels, 1, kMaxSize);
  if (dim_mult.empty() || dim_mult.size() > kMaxLevels)
    fail(source, "dim_mult",
         "must have 1 to " + std::to_string(kMaxLevels) + " levels, got " + std::to_string(dim_mult.size()));
  for (int64_t m : dim_mult) {
    check_range(source, "dim_mult", m, 1, kMaxSize);
    if (base_dim * m > kMaxSize) fail(source, "dim_mult", "gives " + std::to_string(base_dim * m) + " channels");
  }
  // diffusers indexes temperal_downsample[i] for every level but the last and takes the spatial
  // factor from its length: any other length is a config diffusers cannot run consistently.
  if (temperal_downsample.size() + 1 != dim_mult.size())
    fail(source, "temperal_downsample",
         "has " + std::to_string(temperal_downsample.size()) + " entries; dim_mult's " +
             std::to_string(dim_mult.size()) + " levels need " + std::to_string(dim_mult.size() - 1));
  for (double scale : attn_scales)
    if (!(scale > 0.0) || !std::isfinite(scale))
      fail(source, "attn_scales", "has " + std::to_string(scale) + "; scales are positive (1, 0.5, 0.25, ...)");
  // The pipeline views both as [1, z_dim, 1, 1, 1].
  if (latents_mean.size() != static_cast<size_t>(z_dim))
    fail(source, "latents_mean",
         "has " + std::to_string(latents_mean.size()) + " entries for z_dim " + std::to_string(z_dim));
  if (latents_std.size() != static_cast<size_t>(z_dim))
    fail(source, "latents_std",
         "has " + std::to_string(latents_std.size()) + " entries for z_dim " + std::to_string(z_dim));
  for (double s : latents_std)
    if (s == 0.0 || !std::isfinite(s))
      fail(source, "latents_std", "has " + std::to_string(s) + "; the pipeline divides by 1 / std");
  for (double m : latents_mean)
    if (!std::isfinite(m)) fail(source, "latents_mean", "has a value that is not finite");
}

}  // namespace diffuse
