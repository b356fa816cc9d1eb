#pragma once
// T5's tokenizer as transformers runs it (T5Tokenizer on the `tokenizers` backend), read from a
// tokenizer folder's spiece.model (read directly, see src/tokenizers/sentencepiece_model.hpp) and
// tokenizer_config.json:
//   special tokens (<pad>, </s>, <unk>, <extra_id_0..N>) in the text are split out first;
//   the rest is normalized by the model's own precompiled character map (NFKC-like), split at
//   whitespace (so runs of whitespace collapse and the ends are trimmed), each word prefixed with
//   "▁" (and split again at any "▁" it holds), and cut into pieces by the unigram model's best path
//   (unknown characters become <unk>, consecutive ones fused into one);
//   then </s> is appended; truncation keeps </s> last; padding uses <pad>.
// <extra_id_i> is id piece_count + extra_ids - 1 - i, as transformers numbers them.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace diffuse {

class T5Tokenizer {
 public:
  // `folder` holds spiece.model and usually tokenizer_config.json (extra_ids, special tokens,
  // model_max_length). A missing or unreadable spiece.model is an error that names it.
  static T5Tokenizer from_pretrained(const std::filesystem::path& folder);

  // The text's tokens then eos; not truncated, not padded.
  std::vector<int64_t> encode(std::string_view text) const;
  // encode() truncated to `max_length` (at least 1) with eos kept last, then padded with pad_id
  // to exactly `max_length`: what FLUX's pipeline feeds T5 (max_sequence_length).
  std::vector<int64_t> operator()(std::string_view text, int64_t max_length) const;
  // operator() for each text: an int64 CPU tensor [texts.size(), max_length].
  at::Tensor encode_batch(const std::vector<std::string>& texts, int64_t max_length) const;

  // The id of a piece or special token, or -1.
  int64_t token_to_id(std::string_view token) const;
  // spiece.model's pieces plus the extra ids.
  int64_t vocab_size() const;

  int64_t eos_id = 1;
  int64_t pad_id = 0;
  int64_t unk_id = 2;
  int64_t model_max_length = 512;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace diffuse
