#include "tokenizers/tokenizer_common.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include "diffuse/error.hpp"
#include "io/json_text.hpp"
#include "tokenizers/unicode.hpp"

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

void SpecialTokens::add(std::string content, int64_t id, Options options) {
  if (content.empty()) return;
  first_byte_[static_cast<unsigned char>(content[0])] = true;
  for (auto& existing : tokens_)
    if (existing.content == content) {
      existing.id = id;
      existing.options = options;
      return;
    }
  tokens_.push_back({std::move(content), id, options});
}

int64_t SpecialTokens::find(std::string_view content) const {
  for (const auto& token : tokens_)
    if (token.content == content) return token.id;
  return -1;
}

namespace {

// Rust regex's Unicode \w (Alphabetic, marks, decimal digits, connector punctuation, joiners), with
// letters and letter numbers standing for Alphabetic.
bool is_word_character(char32_t c) {
  using unicode::Category;
  const Category k = unicode::category(c);
  return unicode::is_letter(c) || unicode::is_mark(c) || k == Category::Nd || k == Category::Nl ||
         k == Category::Pc || c == 0x200C || c == 0x200D;
}

// The last / first character of `text` (U+FFFD for an ill-formed byte); 0 when empty.
char32_t last_character(std::string_view text) {
  if (text.empty()) return 0;
  size_t i = text.size() - 1;
  while (i > 0 && text.size() - i < 4 && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) --i;
  char32_t c = 0;
  unicode::decode_utf8_at(text, i, c);
  return c;
}
char32_t first_character(std::string_view text) {
  char32_t c = 0;
  if (!text.empty()) unicode::decode_utf8_at(text, 0, c);
  return c;
}

// The number of whitespace bytes that end / start `text`.
size_t trailing_white_space(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t i = end - 1;
    while (i > 0 && end - i < 4 && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) --i;
    char32_t c = 0;
    if (unicode::decode_utf8_at(text, i, c) != end - i || !unicode::is_white_space(c)) break;
    end = i;
  }
  return text.size() - end;
}
size_t leading_white_space(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    char32_t c = 0;
    const size_t length = unicode::decode_utf8_at(text, i, c);
    if (!unicode::is_white_space(c)) break;
    i += length;
  }
  return i;
}

}  // namespace

std::vector<SpecialTokens::Piece> SpecialTokens::split(std::string_view text) const {
  std::vector<Piece> pieces;
  size_t start = 0;  // of the ordinary text not yet emitted
  for (size_t i = 0; i < text.size();) {
    const Token* best = nullptr;
    if (first_byte_[static_cast<unsigned char>(text[i])]) {
      for (const auto& token : tokens_)
        if ((best == nullptr || token.content.size() > best->content.size()) &&
            text.compare(i, token.content.size(), token.content) == 0)
          best = &token;
    }
    if (best == nullptr) {
      ++i;
      continue;
    }
    size_t begin = i;
    size_t end = i + best->content.size();
    // Matches do not overlap: a rejected one is skipped whole, as tokenizers' matcher does.
    i = end;
    if (best->options.single_word &&
        ((begin > 0 && is_word_character(last_character(text.substr(0, begin)))) ||
         (end < text.size() && is_word_character(first_character(text.substr(end))))))
      continue;
    if (best->options.lstrip) begin = std::max(begin - trailing_white_space(text.substr(start, begin - start)), start);
    if (best->options.rstrip) end += leading_white_space(text.substr(end));
    if (begin > start) pieces.push_back({text.substr(start, begin - start), -1});
    pieces.push_back({text.substr(begin, end - begin), best->id});
    i = end;
    start = end;
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
