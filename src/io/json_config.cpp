#include "diffuse/io/json_config.hpp"

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "diffuse/error.hpp"
#include "diffuse/errors.hpp"
#include "io/json_text.hpp"

namespace diffuse {

struct JsonConfig::Value {
  nlohmann::json json;
};

JsonConfig::JsonConfig(std::shared_ptr<const Value> root, std::string source)
    : root_(std::move(root)), source_(std::move(source)) {}

JsonConfig JsonConfig::load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    if (!std::filesystem::exists(file)) throw NotFoundError(file.string() + ": cannot open config: no such file");
    throw Error(file.string() + ": cannot open config");
  }
  std::stringstream text;
  text << in.rdbuf();
  return parse(text.str(), file.string());
}

namespace {

// Python's json module writes non-finite floats as the bare words NaN, Infinity and -Infinity, which
// are not JSON. Outside strings they are swapped for marker strings before parsing, and the markers
// back for the numbers as the parser meets them. (A marker starts with a NUL, which no config holds.)
constexpr std::string_view kNonFiniteMarker = "\\u0000diffuse-nonfinite:";

std::string mark_non_finite(std::string_view text, bool& marked) {
  static constexpr std::pair<std::string_view, std::string_view> kWords[] = {
      {"-Infinity", "-inf"}, {"Infinity", "inf"}, {"NaN", "nan"}};
  std::string out;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\' && i + 1 < text.size()) {
        out += c;
        out += text[++i];
        continue;
      }
      if (c == '"') in_string = false;
      out += c;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const auto& [word, name] : kWords) {
      if (text.substr(i, word.size()) == word) {
        out += '"';
        out += kNonFiniteMarker;
        out += name;
        out += '"';
        i += word.size() - 1;
        replaced = marked = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

nlohmann::json parse_python_json(std::string_view text) {
  bool marked = false;
  std::string rewritten = mark_non_finite(text, marked);
  if (!marked) return nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  const std::string prefix = std::string(1, '\0') + "diffuse-nonfinite:";
  nlohmann::json::parser_callback_t restore = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& value) {
    if (event == nlohmann::json::parse_event_t::value && value.is_string()) {
      const auto& s = value.get_ref<const std::string&>();
      if (s.rfind(prefix, 0) == 0) {
        const std::string name = s.substr(prefix.size());
        value = name == "nan" ? std::numeric_limits<double>::quiet_NaN()
                : name == "inf" ? std::numeric_limits<double>::infinity()
                                : -std::numeric_limits<double>::infinity();
      }
    }
    return true;
  };
  return nlohmann::json::parse(rewritten, restore, /*allow_exceptions=*/false);
}

}  // namespace

JsonConfig JsonConfig::parse(std::string_view text, std::string source) {
  auto value = std::make_shared<Value>();
  value->json = parse_python_json(text);
  if (value->json.is_discarded()) throw CorruptInputError(source + ": not valid JSON");
  if (!value->json.is_object()) throw CorruptInputError(source + ": expected a JSON object at the top level");
  return JsonConfig(std::move(value), std::move(source));
}

JsonConfig JsonConfig::wrap(const nlohmann::json& object, std::string source) {
  if (!object.is_object()) throw Error(source + ": expected a JSON object, got " + object.type_name());
  auto value = std::make_shared<Value>();
  value->json = object;
  return JsonConfig(std::move(value), std::move(source));
}

const nlohmann::json& JsonConfig::json() const { return root_->json; }

namespace {

const nlohmann::json* lookup(const nlohmann::json& root, std::string_view key) {
  auto it = root.find(std::string(key));
  if (it == root.end() || it->is_null()) return nullptr;
  return &*it;
}

[[noreturn]] void wrong_type(const std::string& source, std::string_view key, const char* expected,
                             const nlohmann::json& value) {
  // Only scalars are quoted: dumping an array or object could be huge, or nested deep enough to
  // exhaust the stack.
  throw CorruptInputError(source + ": key '" + std::string(key) + "' should be " + expected + ", got " + value.type_name() +
              (value.is_primitive() ? " " + value.dump() : std::string()));
}

}  // namespace

bool JsonConfig::has(std::string_view key) const { return lookup(root_->json, key) != nullptr; }

std::vector<std::string> JsonConfig::keys() const {
  std::vector<std::string> out;
  for (const auto& [key, value] : root_->json.items()) out.push_back(key);
  return out;
}

int64_t JsonConfig::get_int(std::string_view key, int64_t fallback) const {
  return get_optional_int(key).value_or(fallback);
}

std::optional<int64_t> JsonConfig::get_optional_int(std::string_view key) const {
  const nlohmann::json* v = lookup(root_->json, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) wrong_type(source_, key, "an integer", *v);
  return v->get<int64_t>();
}

double JsonConfig::get_double(std::string_view key, double fallback) const {
  return get_optional_double(key).value_or(fallback);
}

std::optional<double> JsonConfig::get_optional_double(std::string_view key) const {
  const nlohmann::json* v = lookup(root_->json, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) wrong_type(source_, key, "a number", *v);
  return v->get<double>();
}

bool JsonConfig::get_bool(std::string_view key, bool fallback) const {
  const nlohmann::json* v = lookup(root_->json, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) wrong_type(source_, key, "true or false", *v);
  return v->get<bool>();
}

std::string JsonConfig::get_string(std::string_view key, std::string fallback) const {
  const nlohmann::json* v = lookup(root_->json, key);
  if (v == nullptr) return fallback;
  if (!v->is_string()) wrong_type(source_, key, "a string", *v);
  return v->get<std::string>();
}

std::vector<int64_t> JsonConfig::get_int_list(std::string_view key, std::vector<int64_t> fallback) const {
  const nlohmann::json* v = lookup(root_->json, key);
  if (v == nullptr) return fallback;
  if (!v->is_array()) wrong_type(source_, key, "a list of integers", *v);
  std::vector<int64_t> out;
  for (const auto& item : *v) {
    if (!item.is_number_integer()) wrong_type(source_, key, "a list of integers", *v);
    out.push_back(item.get<int64_t>());
  }
  return out;
}

std::vector<std::string> JsonConfig::get_string_list(std::string_view key,
                                                     std::vector<std::string> fallback) const {
  const nlohmann::json* v = lookup(root_->json, key);
  if (v == nullptr) return fallback;
  if (!v->is_array()) wrong_type(source_, key, "a list of strings", *v);
  std::vector<std::string> out;
  for (const auto& item : *v) {
    if (!item.is_string()) wrong_type(source_, key, "a list of strings", *v);
    out.push_back(item.get<std::string>());
  }
  return out;
}

std::optional<std::vector<double>> JsonConfig::get_optional_double_list(std::string_view key) const {
  const nlohmann::json* v = lookup(root_->json, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_array()) wrong_type(source_, key, "a list of numbers", *v);
  std::vector<double> out;
  for (const auto& item : *v) {
    if (!item.is_number()) wrong_type(source_, key, "a list of numbers", *v);
    out.push_back(item.get<double>());
  }
  return out;
}

std::optional<JsonConfig> JsonConfig::get_object(std::string_view key) const {
  const nlohmann::json* v = lookup(root_->json, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_object()) wrong_type(source_, key, "an object", *v);
  auto value = std::make_shared<Value>();
  value->json = *v;
  return JsonConfig(std::move(value), source_ + " [" + std::string(key) + "]");
}

std::string JsonConfig::dump(std::string_view key) const {
  auto it = root_->json.find(std::string(key));
  if (it == root_->json.end()) return "";
  if (!json_depth_at_most(*it, 16)) throw Error(source_ + ": key '" + std::string(key) + "' is nested too deep");
  return it->dump();
}

}  // namespace diffuse
