#include "diffuse/tokenizers/qwen2_tokenizer.hpp"

#include <ATen/ATen.h>

#include <algorithm>

#include "diffuse/error.hpp"
#include "tokenizers/qwen2_pretokenizer.hpp"
#include "tokenizers/qwen2_tokenizer_impl.hpp"
#include "tokenizers/unicode.hpp"

namespace diffuse {

// ---- one text ------------------------------------------------------------------------------------

// The word's bytes as the vocabulary ids of their characters, merged by BPE. A character missing from
// the vocabulary gives the unknown token, or nothing when there is none (tokenizers' BPE skips it;
// transformers' Qwen2Tokenizer names an unk that its vocabulary lacks, where tokenizers would fail:
// every byte is in a real Qwen vocabulary, so neither happens there).
std::vector<int64_t> Qwen2Tokenizer::Impl::merge_word(const std::string& word) const {
  std::vector<int64_t> symbols;
  symbols.reserve(word.size());
  for (char c : word) {
    int64_t id = byte_id[static_cast<unsigned char>(c)];
    if (id < 0) id = unk_id;
    if (id >= 0) symbols.push_back(id);
  }
  return merges.merge(symbols);
}

void Qwen2Tokenizer::Impl::bpe(const std::string& word, std::vector<int64_t>& out) const {
  if (cache.append(word, out)) return;
  const std::vector<int64_t> ids = merge_word(word);
  out.insert(out.end(), ids.begin(), ids.end());
  cache.store(word, ids);
}

void Qwen2Tokenizer::Impl::tokenize_normalized(std::u32string_view text, std::vector<int64_t>& out) const {
  std::string word;
  for (const auto& [begin, end] : tokenizers::qwen2_split(text)) {
    word.clear();
    if (add_prefix_space && text[begin] != U' ') word.push_back(' ');
    for (size_t i = begin; i < end; ++i) unicode::append_utf8(word, text[i]);
    bpe(word, out);
  }
}

void Qwen2Tokenizer::Impl::tokenize_text(std::string_view text, std::vector<int64_t>& out) const {
  const std::u32string normalized = unicode::nfc(unicode::decode_utf8(text));
  if (normalized_added.empty()) {
    tokenize_normalized(normalized, out);
    return;
  }
  const std::string utf8 = unicode::encode_utf8(normalized);
  for (const auto& piece : normalized_added.split(utf8)) {
    if (piece.id >= 0)
      out.push_back(piece.id);
    else
      tokenize_normalized(unicode::decode_utf8(piece.text), out);
  }
}

std::vector<int64_t> Qwen2Tokenizer::encode(std::string_view text) const {
  const std::string valid = unicode::sanitize_utf8(text);
  std::vector<int64_t> ids;
  for (const auto& piece : impl_->raw_added.split(valid)) {
    if (piece.id >= 0)
      ids.push_back(piece.id);
    else
      impl_->tokenize_text(piece.text, ids);
  }
  return ids;
}

// ---- batches -------------------------------------------------------------------------------------

Qwen2Tokenizer::Batch Qwen2Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                                   std::optional<int64_t> max_length, Padding padding) const {
  if (max_length && *max_length < 0)
    throw Error("Qwen2Tokenizer: max_length should be at least 0, got " + std::to_string(*max_length));
  if (pad_id < 0)
    throw Error("Qwen2Tokenizer: cannot pad a batch: the tokenizer has no pad token (tokenizer_config.json's "
                "pad_token is null)");
  const int64_t limit = max_length.value_or(model_max_length);
  if (limit < 0)
    throw Error("Qwen2Tokenizer: cannot truncate to model_max_length " + std::to_string(limit) +
                " (tokenizer_config.json); pass a max_length");

  std::vector<std::vector<int64_t>> rows;
  rows.reserve(texts.size());
  size_t longest = 0;
  for (const std::string& text : texts) {
    std::vector<int64_t> ids = encode(text);
    if (static_cast<uint64_t>(ids.size()) > static_cast<uint64_t>(limit)) {
      const auto excess = static_cast<std::ptrdiff_t>(ids.size() - static_cast<size_t>(limit));
      if (truncation_side == Side::kRight)
        ids.erase(ids.end() - excess, ids.end());
      else
        ids.erase(ids.begin(), ids.begin() + excess);
    }
    longest = std::max(longest, ids.size());
    rows.push_back(std::move(ids));
  }

  int64_t length = static_cast<int64_t>(longest);
  if (padding == Padding::kMaxLength) {
    // Rows of the unlimited model_max_length (transformers' int(1e30)) cannot be allocated.
    constexpr int64_t kLongestRow = int64_t{1} << 24;
    if (!max_length && limit > kLongestRow)
      throw Error("Qwen2Tokenizer: padding to max_length needs a max_length (model_max_length is " +
                  std::to_string(model_max_length) + ")");
    if (limit > kLongestRow)
      throw Error("Qwen2Tokenizer: max_length " + std::to_string(limit) + " is too long to pad to (at most 2^24)");
    length = limit;
  }

  const auto batch = static_cast<int64_t>(texts.size());
  Batch out;
  out.input_ids = at::full({batch, length}, pad_id, at::TensorOptions().dtype(at::kLong));
  out.attention_mask = at::zeros({batch, length}, at::TensorOptions().dtype(at::kLong));
  int64_t* ids = out.input_ids.data_ptr<int64_t>();
  int64_t* mask = out.attention_mask.data_ptr<int64_t>();
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto& row = rows[r];
    const size_t offset = padding_side == Side::kRight ? 0 : static_cast<size_t>(length) - row.size();
    int64_t* row_ids = ids + static_cast<int64_t>(r) * length + offset;
    int64_t* row_mask = mask + static_cast<int64_t>(r) * length + offset;
    std::copy(row.begin(), row.end(), row_ids);
    std::fill(row_mask, row_mask + row.size(), 1);
  }
  return out;
}

// ---- the vocabulary ------------------------------------------------------------------------------

int64_t Qwen2Tokenizer::token_to_id(std::string_view token) const {
  const std::string key(token);
  if (auto it = impl_->added.find(key); it != impl_->added.end()) return it->second;
  if (auto it = impl_->vocab.find(key); it != impl_->vocab.end()) return it->second;
  return -1;
}

int64_t Qwen2Tokenizer::vocab_size() const { return impl_->max_id + 1; }

}  // namespace diffuse
