// T5's tokenizer: parsing spiece.model (the ModelProto, its pieces and the normalizer's precompiled
// charsmap, a double-array trie), tokenizer_config.json, and encoding any text.
// Input: parts (fuzz_support.hpp) spiece.model, tokenizer_config.json, then up to 5 texts. An empty
// tokenizer_config.json part leaves the file out (it is optional).
//
// Most inputs spoil the model; their texts are encoded by the tokenizer of fuzz/data/t5 (with a small
// charsmap) instead, so that every input exercises normalization and the unigram search.
//
// Promise under test: loading gives a tokenizer or a diffuse::Error; encoding never fails for any
// bytes, ends with eos, and every id is below vocab_size() (so the embedding lookup cannot fail);
// operator() gives exactly max_length ids; encode_batch gives the same rows.

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <cstring>

#include "diffuse/tokenizers/t5_tokenizer.hpp"
#include "fuzz_support.hpp"
#include "tokenizers/sentencepiece_model.hpp"  // src/: the reader's in-memory entry point

using namespace diffuse;

namespace {

constexpr size_t kFiles = 2;
constexpr size_t kMaxTexts = 5;

std::string describe(std::string_view text) { return "text of " + std::to_string(text.size()) + " bytes"; }

// Each text once through encode() and once through operator() at a max_length the text picks (so
// both truncation and padding happen); the first two through encode_batch.
void exercise(const T5Tokenizer& tokenizer, const std::vector<std::string>& texts) {
  for (const std::string& text : texts) {
    const std::vector<int64_t> ids = tokenizer.encode(text);
    FUZZ_CHECK(!ids.empty() && ids.back() == tokenizer.eos_id, describe(text));
    for (int64_t id : ids) FUZZ_CHECK(id >= 0 && id < tokenizer.vocab_size(), "id out of the vocabulary");
    const auto max_length = static_cast<int64_t>(1 + text.size() % 11);
    const std::vector<int64_t> row = tokenizer(text, max_length);
    FUZZ_CHECK(static_cast<int64_t>(row.size()) == max_length, describe(text));
    if (ids.size() >= static_cast<size_t>(max_length))
      FUZZ_CHECK(row.back() == tokenizer.eos_id && std::equal(row.begin(), row.end() - 1, ids.begin()),
                 "truncation: not the first ids then eos");
    else
      FUZZ_CHECK(std::equal(ids.begin(), ids.end(), row.begin()) &&
                     std::all_of(row.begin() + ids.size(), row.end(), [&](int64_t id) { return id == tokenizer.pad_id; }),
                 "padding: not the ids then pad");
    (void)tokenizer.token_to_id(text);
  }
  fuzz::expect_result_or_error("T5Tokenizer(max_length 0)", [&] { tokenizer(texts.front(), 0); });
  const std::vector<std::string> batch_texts(texts.begin(), texts.begin() + std::min<size_t>(texts.size(), 2));
  const at::Tensor batch = tokenizer.encode_batch(batch_texts, 6);
  FUZZ_CHECK(batch.dim() == 2 && batch.size(0) == static_cast<int64_t>(batch_texts.size()) && batch.size(1) == 6,
             "encode_batch shape");
  const std::vector<int64_t> last = tokenizer(batch_texts.back(), 6);
  FUZZ_CHECK(std::equal(last.begin(), last.end(), batch[batch.size(0) - 1].data_ptr<int64_t>()),
             "encode_batch row differs from operator()");
}

// serialize() (what random pipelines write) gives back what parse() read.
void check_round_trip(std::string_view serialized) {
  using tokenizers::SentencePieceModel;
  SentencePieceModel model;
  if (!fuzz::expect_result_or_error("SentencePieceModel::parse",
                                    [&] { model = SentencePieceModel::parse(serialized, "spiece.model"); }))
    return;
  const SentencePieceModel again = SentencePieceModel::parse(model.serialize(), "serialized");
  FUZZ_CHECK(again.pieces.size() == model.pieces.size(), "round trip: piece count");
  for (size_t i = 0; i < model.pieces.size(); ++i) {
    const auto &a = model.pieces[i], &b = again.pieces[i];
    FUZZ_CHECK(a.text == b.text && a.type == b.type && std::memcmp(&a.score, &b.score, sizeof a.score) == 0,
               "round trip: piece " + std::to_string(i));
  }
  FUZZ_CHECK(again.model_type == model.model_type && again.unk_id == model.unk_id &&
                 again.byte_fallback == model.byte_fallback && again.precompiled_charsmap == model.precompiled_charsmap,
             "round trip: trainer or normalizer spec");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fuzz::ScratchFolder scratch("fuzz_t5_tokenizer");
  static const T5Tokenizer reference = T5Tokenizer::from_pretrained(fuzz::data_folder() / "t5");

  const auto parts = fuzz::split_parts(data, size, kFiles + kMaxTexts);
  scratch.write("spiece.model", parts[0]);
  if (parts.size() > 1 && !parts[1].empty())
    scratch.write("tokenizer_config.json", parts[1]);
  else
    scratch.remove("tokenizer_config.json");
  std::vector<std::string> texts;
  for (size_t i = kFiles; i < parts.size(); ++i) texts.emplace_back(parts[i]);
  if (texts.empty()) texts.emplace_back(parts.size() == 1 ? parts[0] : std::string_view());

  check_round_trip(parts[0]);
  std::optional<T5Tokenizer> tokenizer;
  if (fuzz::expect_result_or_error("T5Tokenizer::from_pretrained",
                                   [&] { tokenizer = T5Tokenizer::from_pretrained(scratch.path()); }))
    fuzz::expect_result("T5Tokenizer (fuzzed files)", [&] { exercise(*tokenizer, texts); });
  else
    fuzz::expect_result("T5Tokenizer (fuzz/data/t5)", [&] { exercise(reference, texts); });
  return 0;
}
