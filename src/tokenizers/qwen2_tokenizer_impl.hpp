#pragma once
// Qwen2Tokenizer's state, shared by its loading (qwen2_tokenizer_files.cpp) and its encoding
// (qwen2_tokenizer.cpp).

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "diffuse/tokenizers/qwen2_tokenizer.hpp"
#include "tokenizers/byte_level_bpe.hpp"
#include "tokenizers/tokenizer_common.hpp"

namespace diffuse {

struct Qwen2Tokenizer::Impl {
  // The BPE model: its vocabulary, merges, and the vocabulary id of each byte's character (-1 when
  // absent: the byte then gives unk_id, or nothing when there is none, see merge_word()).
  tokenizers::Vocab vocab;
  tokenizers::BpeMerges merges;
  std::array<int64_t, 256> byte_id{};
  int64_t unk_id = -1;
  // ByteLevel's add_prefix_space: a space before each piece that does not start with one.
  bool add_prefix_space = false;

  // Added tokens: content -> id (looked up before the vocabulary, as tokenizers does), and the
  // matchers of those compared with the raw text and of those compared with the NFC text.
  std::unordered_map<std::string, int64_t> added;
  tokenizers::SpecialTokens raw_added;
  tokenizers::SpecialTokens normalized_added;

  int64_t max_id = -1;  // over the vocabulary and the added tokens
  tokenizers::BpeCache cache;

  // Appends the ids of text that holds no raw added token: NFC, then normalized added tokens, then
  // the split and BPE of each piece.
  void tokenize_text(std::string_view text, std::vector<int64_t>& out) const;
  void tokenize_normalized(std::u32string_view text, std::vector<int64_t>& out) const;
  void bpe(const std::string& word, std::vector<int64_t>& out) const;
  std::vector<int64_t> merge_word(const std::string& word) const;
};

}  // namespace diffuse
