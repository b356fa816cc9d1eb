#include "tokenizers/tokenizer_common.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include "diffuse/error.hpp"
#include "io/json_text.hpp"

namespace diffuse::tokenizers {

nlohmann::json read_json_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot open file");
  std::stringstream text;
  text << in.rdbuf();
  const std::string content = text.str();
  nlohmann::json json = nlohmann::json::parse(content, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) throw Error(file.string() + ": not valid JSON");
  return json;
}

TokenizerConfig TokenizerConfig::load(const std::filesystem::path& folder) {
  TokenizerConfig config;
  config.file = folder / "tokenizer_config.json";
  if (!std::filesystem::exists(config.file)) return config;
  config.json = read_json_file(config.file);
  if (!config.json.is_object()) throw Error(config.file.string() + ": expected a JSON object");
  return config;
}

namespace {

std::optional<std::string> token_content(const nlohmann::json& value, const std::filesystem::path& file,
                                         const char* key) {
  if (value.is_null()) return std::nullopt;
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  throw Error(file.string() + ": '" + key + "' should be a token string or {\"content\": ...}, got " +
              json_for_message(value));
}

}  // namespace

std::optional<std::string> TokenizerConfig::token(const char* key) const {
  auto it = json.find(key);
  if (it == json.end()) return std::nullopt;
  return token_content(*it, file, key);
}

std::vector<std::string> TokenizerConfig::token_list(const char* key) const {
  std::vector<std::string> out;
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return out;
  // A list, or (transformers 5's named extra special tokens) an object of name -> token.
  if (!it->is_array() && !it->is_object())
    throw Error(file.string() + ": '" + key + "' should be a list of tokens");
  for (const auto& value : *it)
    if (auto content = token_content(value, file, key)) out.push_back(*content);
  return out;
}

int64_t TokenizerConfig::integer(const char* key, int64_t fallback) const {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return fallback;
  if (it->is_number_integer()) return it->get<int64_t>();
  // transformers writes "no limit" as a huge float (int(1e30)).
  if (it->is_number_float() && it->get<double>() >= 9.2e18) return std::numeric_limits<int64_t>::max();
  // Cast only what fits int64 (anything else is undefined behavior) and is whole.
  if (it->is_number_float() && it->get<double>() > -9.2e18 &&
      it->get<double>() == static_cast<double>(static_cast<int64_t>(it->get<double>())))
    return static_cast<int64_t>(it->get<double>());
  throw Error(file.string() + ": '" + key + "' should be an integer, got " + json_for_message(*it));
}

void SpecialTokens::add(std::string content, int64_t id) {
  if (content.empty()) return;
  first_byte_[static_cast<unsigned char>(content[0])] = true;
  for (auto& [existing, existing_id] : tokens_)
    if (existing == content) {
      existing_id = id;
      return;
    }
  tokens_.emplace_back(std::move(content), id);
}

int64_t SpecialTokens::find(std::string_view content) const {
  for (const auto& [token, id] : tokens_)
    if (token == content) return id;
  return -1;
}

std::vector<SpecialTokens::Piece> SpecialTokens::split(std::string_view text) const {
  std::vector<Piece> pieces;
  size_t start = 0;  // of the ordinary text not yet emitted
  for (size_t i = 0; i < text.size();) {
    size_t best_length = 0;
    int64_t best_id = -1;
    if (first_byte_[static_cast<unsigned char>(text[i])]) {
      for (const auto& [token, id] : tokens_)
        if (token.size() > best_length && text.compare(i, token.size(), token) == 0) {
          best_length = token.size();
          best_id = id;
        }
    }
    if (best_length == 0) {
      ++i;
      continue;
    }
    if (i > start) pieces.push_back({text.substr(start, i - start), -1});
    pieces.push_back({text.substr(i, best_length), best_id});
    i += best_length;
    start = i;
  }
  if (start < text.size()) pieces.push_back({text.substr(start), -1});
  return pieces;
}

std::vector<int64_t> truncate_and_pad(std::vector<int64_t> ids, int64_t max_length, size_t trailing,
                                      int64_t pad_id) {
  const auto length = static_cast<size_t>(max_length);
  if (ids.size() > length) ids.erase(ids.end() - static_cast<std::ptrdiff_t>(ids.size() - length + trailing),
                                     ids.end() - static_cast<std::ptrdiff_t>(trailing));
  ids.resize(length, pad_id);
  return ids;
}

at::Tensor encode_rows(const std::vector<std::string>& texts, int64_t length,
                       const std::function<std::vector<int64_t>(std::string_view)>& encode_row) {
  at::Tensor out = at::empty({static_cast<int64_t>(texts.size()), length}, at::TensorOptions().dtype(at::kLong));
  int64_t* data = out.data_ptr<int64_t>();
  for (const auto& text : texts) {
    const std::vector<int64_t> row = encode_row(text);
    std::copy(row.begin(), row.end(), data);
    data += length;
  }
  return out;
}

}  // namespace diffuse::tokenizers
