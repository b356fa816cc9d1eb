#pragma once
// CLIP's tokenizer as transformers runs it (CLIPTokenizer on the `tokenizers` backend), read from
// a tokenizer folder's vocab.json, merges.txt and tokenizer_config.json:
//   <|startoftext|> / <|endoftext|> in the text are split out first, as special tokens;
//   the rest is normalized (NFC, whitespace runs to one space, lowercase), split into words by
//   CLIP's pattern ('s 't 're 've 'm 'll 'd, letter runs, single digits, punctuation runs),
//   mapped to GPT-2's byte-level alphabet and merged by byte-level BPE with "</w>" ending each word;
//   then bos ... eos, truncated to max_length keeping eos last, and padded with the pad token.
// The ids match transformers 5 exactly, Unicode data included (see src/tokenizers/unicode.hpp).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace diffuse {

class ClipTokenizer {
 public:
  // `folder` holds vocab.json and merges.txt, and usually tokenizer_config.json (special tokens and
  // model_max_length; transformers' defaults when absent). Missing or malformed files are errors
  // that name the file.
  static ClipTokenizer from_pretrained(const std::filesystem::path& folder);

  // bos, the text's tokens, eos: no truncation, no padding.
  std::vector<int64_t> encode(std::string_view text) const;
  // What the pipeline feeds the text encoder: encode(), truncated to `max_length` with eos kept
  // last, then padded with pad_id to exactly `max_length` (at least 2).
  std::vector<int64_t> operator()(std::string_view text, int64_t max_length = 77) const;
  // operator() for each text: an int64 CPU tensor [texts.size(), max_length].
  at::Tensor encode_batch(const std::vector<std::string>& texts, int64_t max_length = 77) const;

  // The id of a token of the vocabulary, or -1.
  int64_t token_to_id(std::string_view token) const;
  int64_t vocab_size() const;

  int64_t bos_id = 0;
  int64_t eos_id = 0;
  int64_t pad_id = 0;
  int64_t model_max_length = 77;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace diffuse
