#include "diffuse/schedulers/scheduler.hpp"

#include <nlohmann/json.hpp>
#include <set>

#include "diffuse/error.hpp"

namespace diffuse {

Scheduler::~Scheduler() = default;

Scheduler::Scheduler(std::string class_name, const nlohmann::json& typed, const nlohmann::json& defaults) {
  auto config = std::make_shared<nlohmann::json>(typed);
  nlohmann::json used_defaults = nlohmann::json::array();
  for (const auto& [key, value] : typed.items())
    if (defaults.contains(key) && defaults.at(key) == value) used_defaults.push_back(key);
  if (!used_defaults.empty()) (*config)["_use_default_values"] = std::move(used_defaults);
  (*config)["_class_name"] = std::move(class_name);
  json_config_ = std::move(config);
}

const nlohmann::json& Scheduler::config() const { return *json_config_; }

namespace {

// The keys that `given` says took their class's defaults (diffusers' `_use_default_values`).
std::set<std::string> used_defaults(const nlohmann::json& given) {
  std::set<std::string> keys;
  auto it = given.find("_use_default_values");
  if (it == given.end() || !it->is_array()) return keys;
  for (const auto& key : *it)
    if (key.is_string()) keys.insert(key.get<std::string>());
  return keys;
}

// `given` without the keys that were only defaults where it came from, so that this class uses its
// own defaults for them (PNDM's "leading" spacing does not become Euler's; diffusers does the same).
nlohmann::json without_used_defaults(const nlohmann::json& given) {
  const std::set<std::string> dropped = used_defaults(given);
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [key, value] : given.items())
    if (key != "_use_default_values" && dropped.count(key) == 0) out[key] = value;
  return out;
}

}  // namespace

JsonConfig Scheduler::readable_config(const nlohmann::json& given, const std::string& source) {
  if (!given.is_object()) throw Error(source + ": a scheduler config must be a JSON object, got " + given.type_name());
  return JsonConfig::wrap(without_used_defaults(given), source);
}

void Scheduler::adopt_config(const nlohmann::json& given) {
  const nlohmann::json& typed = *json_config_;
  nlohmann::json merged = without_used_defaults(given);
  nlohmann::json defaults = nlohmann::json::array();
  for (const auto& [key, value] : typed.items()) {
    if (key.empty() || key[0] == '_') continue;
    if (!merged.contains(key)) defaults.push_back(key);
    merged[key] = value;
  }
  merged["_class_name"] = typed.at("_class_name");
  if (!defaults.empty()) merged["_use_default_values"] = std::move(defaults);
  json_config_ = std::make_shared<nlohmann::json>(std::move(merged));
}

}  // namespace diffuse
