#pragma once
// Qwen2's tokenizer as transformers 5 runs it (Qwen2Tokenizer / Qwen2TokenizerFast, the `tokenizers`
// backend), read from a tokenizer folder: what Qwen-Image's pipeline feeds Qwen2.5-VL.
//   Added tokens (<|im_start|>, <|im_end|>, <|endoftext|>, the vision tokens, ...) are matched whole
//   in the raw text first (leftmost, then longest; those flagged "normalized" in the NFC text), each
//   giving its own id;
//   the rest is NFC-normalized, split by Qwen2's pattern (contractions, letter runs with one leading
//   non-letter, single digits, punctuation runs, line breaks, whitespace; see
//   src/tokenizers/qwen2_pretokenizer.hpp), mapped to GPT-2's byte-level alphabet and merged by
//   byte-level BPE in merge-rank order.
//   No bos or eos is added. Batches are truncated to max_length and padded to the longest row (or
//   to max_length) with the pad token, with an attention mask.
// Every id comes from the folder's files; none is assumed. The ids match transformers 5 exactly.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace diffuse {

class Qwen2Tokenizer {
 public:
  // `folder` holds either tokenizer.json (model.vocab, model.merges, and added_tokens with their
  // ids and flags) or vocab.json + merges.txt (added tokens then from tokenizer_config.json's
  // added_tokens_decoder), and usually tokenizer_config.json: eos/pad/unk tokens, the extra special
  // tokens, model_max_length, padding_side, truncation_side, add_prefix_space. As in transformers 5,
  // the normalizer (NFC) and pre-tokenizer are Qwen2's own whatever tokenizer.json says, and a
  // special token of tokenizer_config.json that no file gives an id takes the next free one (as
  // tokenizers numbers added tokens). Missing or malformed files are errors that name the file.
  static Qwen2Tokenizer from_pretrained(const std::filesystem::path& folder);

  // The text's ids: no special tokens added, not truncated, not padded. Any bytes are accepted
  // (ill-formed UTF-8 is read as U+FFFD, as Python would have to).
  std::vector<int64_t> encode(std::string_view text) const;

  enum class Padding {
    kLongest,    // to the longest row of the batch (transformers' padding="longest" / True)
    kMaxLength,  // to max_length (padding="max_length")
  };
  enum class Side { kRight, kLeft };

  // A batch as the model takes it: int64 CPU tensors [texts, length].
  struct Batch {
    at::Tensor input_ids;
    at::Tensor attention_mask;  // 1 for the text's tokens, 0 for padding
  };
  // encode() for each text, truncated to `max_length` (model_max_length when absent, as
  // transformers' truncation=True) on truncation_side, then padded with pad_id on padding_side.
  // QwenImagePipeline calls it with max_length = max_sequence_length + the template's dropped
  // prefix and Padding::kLongest.
  Batch encode_batch(const std::vector<std::string>& texts, std::optional<int64_t> max_length = std::nullopt,
                     Padding padding = Padding::kLongest) const;

  // The id of an added token or of a token of the vocabulary, or -1.
  int64_t token_to_id(std::string_view token) const;
  // The largest id (added tokens included) + 1: the rows an embedding for these ids needs.
  int64_t vocab_size() const;

  int64_t pad_id = -1;  // -1 when the folder names no pad token; then padding is an error
  int64_t eos_id = -1;  // informational: never added by encode()
  int64_t model_max_length = INT64_MAX;
  Side padding_side = Side::kRight;
  Side truncation_side = Side::kRight;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace diffuse
