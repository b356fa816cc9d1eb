#pragma once
// JSON values in error messages and round trips, safe for any input: nlohmann's dump() recurses once
// per level, so a value nested 40,000 deep (a damaged or hostile file) would overflow the stack.

#include <nlohmann/json.hpp>

#include <string>

namespace diffuse {

// Whether `value` nests at most `depth` levels (a scalar is 0). Recurses at most `depth` levels.
inline bool json_depth_at_most(const nlohmann::json& value, int depth) {
  if (!value.is_structured()) return true;
  if (depth == 0) return false;
  for (const auto& child : value) {
    if (!json_depth_at_most(child, depth - 1)) return false;
  }
  return true;
}

// The value as text for a message: shallow values as JSON (cut to 200 characters), deeper ones by type.
inline std::string json_for_message(const nlohmann::json& value) {
  if (!json_depth_at_most(value, 4)) return std::string("a deeply nested ") + value.type_name();
  std::string text = value.dump();
  if (text.size() > 200) text = text.substr(0, 200) + "...";
  return text;
}

}  // namespace diffuse
