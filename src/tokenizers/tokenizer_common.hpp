#pragma once
// What the tokenizers (CLIP's, T5's, Qwen2's) share: tokenizer_config.json, special tokens split out
// of the raw text, and truncation + padding into fixed-length rows.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace diffuse::tokenizers {

// Reads a JSON file, naming it in any error.
nlohmann::json read_json_file(const std::filesystem::path& file);

// tokenizer_config.json (an empty object when the folder has none).
struct TokenizerConfig {
  std::filesystem::path file;
  nlohmann::json json = nlohmann::json::object();

  static TokenizerConfig load(const std::filesystem::path& folder);
  // A special token given as a string or as an AddedToken object {"content": ...}; nullopt when
  // absent or null.
  std::optional<std::string> token(const char* key) const;
  // A list of special tokens (strings or AddedToken objects), or an object of name -> token; empty
  // when absent.
  std::vector<std::string> token_list(const char* key) const;
  int64_t integer(const char* key, int64_t fallback) const;
};

// Special (added) tokens, matched in the raw text before any normalization, leftmost first and
// longest first at the same place, as tokenizers' AddedVocabulary does.
class SpecialTokens {
 public:
  // An AddedToken's matching flags (tokenizers' names): `single_word` matches only where no word
  // character (\w) touches either end; `lstrip` / `rstrip` take the whitespace before / after the
  // token into it, so that it gives no token of its own.
  struct Options {
    bool single_word = false;
    bool lstrip = false;
    bool rstrip = false;
  };
  void add(std::string content, int64_t id, Options options);
  void add(std::string content, int64_t id) { add(std::move(content), id, Options{}); }
  int64_t find(std::string_view content) const;  // -1 when not special
  bool empty() const { return tokens_.empty(); }

  struct Piece {
    std::string_view text;
    int64_t id;  // -1: ordinary text, to be tokenized
  };
  std::vector<Piece> split(std::string_view text) const;

 private:
  struct Token {
    std::string content;
    int64_t id;
    Options options;
  };
  std::vector<Token> tokens_;
  bool first_byte_[256] = {};
};

// Truncates `ids` (content plus `trailing` special ids at its end) to `max_length` by dropping
// content from the right, keeping the trailing specials, then pads with `pad_id` to `max_length`.
std::vector<int64_t> truncate_and_pad(std::vector<int64_t> ids, int64_t max_length, size_t trailing,
                                      int64_t pad_id);

// Each text encoded by `encode_row` (which returns exactly `length` ids) as one row of an int64 CPU
// tensor [texts, length].
at::Tensor encode_rows(const std::vector<std::string>& texts, int64_t length,
                       const std::function<std::vector<int64_t>(std::string_view)>& encode_row);

}  // namespace diffuse::tokenizers
