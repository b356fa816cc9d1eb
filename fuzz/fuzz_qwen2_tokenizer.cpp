// Qwen2's tokenizer: loading tokenizer.json, or vocab.json + merges.txt, with tokenizer_config.json,
// and encoding any text.
// Input: parts (fuzz_support.hpp) tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, then
// up to 5 texts. An empty part leaves its file out (so that either layout can be fuzzed).
//
// Most inputs spoil the files; their texts are encoded by the tokenizer of fuzz/data/qwen2 instead,
// so that every input exercises the added-token matcher, NFC, the pre-tokenizer's split and BPE.
//
// Promise under test: loading gives a tokenizer or a diffuse::Error; encoding never fails for any
// bytes (ill-formed UTF-8 included) and gives the same ids again (the BPE cache); encode_batch gives
// [texts, length] ids and mask whose rows are encode() truncated to max_length, then padded.

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>

#include "diffuse/tokenizers/qwen2_tokenizer.hpp"
#include "fuzz_support.hpp"

using namespace diffuse;

namespace {

constexpr size_t kFiles = 4;
constexpr size_t kMaxTexts = 5;

std::string describe(std::string_view text) { return "text of " + std::to_string(text.size()) + " bytes"; }

void exercise(const Qwen2Tokenizer& tokenizer, const std::vector<std::string>& texts) {
  for (const std::string& text : texts) {
    const std::vector<int64_t> ids = tokenizer.encode(text);
    FUZZ_CHECK(tokenizer.encode(text) == ids, "encode() differs the second time: " + describe(text));
    // Every id comes from the vocabulary or the added tokens, whatever the files.
    for (int64_t id : ids) FUZZ_CHECK(id >= 0 && id < tokenizer.vocab_size(), "id out of the vocabulary");
    (void)tokenizer.token_to_id(text);
  }
  if (tokenizer.pad_id < 0) {
    fuzz::expect_result_or_error("Qwen2Tokenizer::encode_batch (no pad token)", [&] { tokenizer.encode_batch(texts); });
    return;
  }
  const auto max_length = static_cast<int64_t>(texts.front().size() % 13);
  const auto padding = texts.size() % 2 == 0 ? Qwen2Tokenizer::Padding::kLongest : Qwen2Tokenizer::Padding::kMaxLength;
  const Qwen2Tokenizer::Batch batch = tokenizer.encode_batch(texts, max_length, padding);
  const auto rows = static_cast<int64_t>(texts.size());
  FUZZ_CHECK(batch.input_ids.dim() == 2 && batch.input_ids.size(0) == rows &&
                 batch.attention_mask.sizes() == batch.input_ids.sizes(),
             "encode_batch shape");
  const int64_t length = batch.input_ids.size(1);
  FUZZ_CHECK(length <= max_length && (padding == Qwen2Tokenizer::Padding::kLongest || length == max_length),
             "encode_batch length");
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int64_t> ids = tokenizer.encode(texts[static_cast<size_t>(r)]);
    const size_t kept = std::min(ids.size(), static_cast<size_t>(length));
    if (tokenizer.truncation_side == Qwen2Tokenizer::Side::kRight)
      ids.resize(kept);
    else
      ids.erase(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(kept));
    const int64_t* id_row = batch.input_ids[r].data_ptr<int64_t>();
    const int64_t* mask_row = batch.attention_mask[r].data_ptr<int64_t>();
    const size_t offset = tokenizer.padding_side == Qwen2Tokenizer::Side::kRight ? 0 : static_cast<size_t>(length) - kept;
    for (size_t i = 0; i < static_cast<size_t>(length); ++i) {
      const bool valid = i >= offset && i < offset + kept;
      FUZZ_CHECK(id_row[i] == (valid ? ids[i - offset] : tokenizer.pad_id), "encode_batch row: " + describe(texts[r]));
      FUZZ_CHECK(mask_row[i] == (valid ? 1 : 0), "encode_batch mask: " + describe(texts[r]));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fuzz::ScratchFolder scratch("fuzz_qwen2_tokenizer");

  const auto parts = fuzz::split_parts(data, size, kFiles + kMaxTexts);
  const char* const names[kFiles] = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"};
  for (size_t i = 0; i < kFiles; ++i) {
    if (i < parts.size() && !parts[i].empty())
      scratch.write(names[i], parts[i]);
    else
      scratch.remove(names[i]);
  }
  std::vector<std::string> texts;
  for (size_t i = kFiles; i < parts.size(); ++i) texts.emplace_back(parts[i]);
  if (texts.empty()) texts.emplace_back(parts.size() == 1 ? parts[0] : std::string_view());

  std::optional<Qwen2Tokenizer> tokenizer;
  if (fuzz::expect_result_or_error("Qwen2Tokenizer::from_pretrained",
                                   [&] { tokenizer = Qwen2Tokenizer::from_pretrained(scratch.path()); })) {
    fuzz::expect_result("Qwen2Tokenizer (fuzzed files)", [&] { exercise(*tokenizer, texts); });
  } else {
    // Loaded for each input, not once: its BPE cache grows with every new word, and memory that grows
    // from one input to the next makes libFuzzer's leak check run after every input (then give up).
    fuzz::expect_result("Qwen2Tokenizer (fuzz/data/qwen2)", [&] {
      exercise(Qwen2Tokenizer::from_pretrained(fuzz::data_folder() / "qwen2"), texts);
    });
  }
  return 0;
}
