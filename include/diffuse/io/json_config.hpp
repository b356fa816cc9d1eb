#pragma once
// A JSON config file (config.json, model_index.json, scheduler_config.json) read key by key with
// typed getters. Absent keys and JSON null give the caller's default, as diffusers' and
// transformers' config classes do; unknown keys are ignored; a key of the wrong type is an error that
// names the key and the file. The text may hold NaN, Infinity and -Infinity, which Python's json module
// writes for non-finite floats (diffusers saves DPMSolverMultistepScheduler's lambda_min_clipped so).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace diffuse {

class JsonConfig {
 public:
  static JsonConfig load(const std::filesystem::path& file);
  // `source` names the text in error messages.
  static JsonConfig parse(std::string_view text, std::string source);
  // A JSON object already in memory (a scheduler's config handed from one class to another).
  static JsonConfig wrap(const nlohmann::json& object, std::string source);

  const std::string& source() const { return source_; }
  bool has(std::string_view key) const;  // present and not null
  std::vector<std::string> keys() const;

  int64_t get_int(std::string_view key, int64_t fallback) const;
  double get_double(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;
  std::string get_string(std::string_view key, std::string fallback) const;
  std::optional<double> get_optional_double(std::string_view key) const;
  std::optional<int64_t> get_optional_int(std::string_view key) const;
  std::vector<int64_t> get_int_list(std::string_view key, std::vector<int64_t> fallback) const;
  std::vector<std::string> get_string_list(std::string_view key, std::vector<std::string> fallback) const;
  std::optional<std::vector<double>> get_optional_double_list(std::string_view key) const;
  // A nested object, e.g. a text_config block; throws if present and not an object.
  std::optional<JsonConfig> get_object(std::string_view key) const;
  // The value's JSON text (for keys whose shape varies, such as model_index entries).
  std::string dump(std::string_view key) const;
  // The whole object.
  const nlohmann::json& json() const;

 private:
  struct Value;
  JsonConfig(std::shared_ptr<const Value> root, std::string source);
  std::shared_ptr<const Value> root_;
  std::string source_;
};

}  // namespace diffuse
