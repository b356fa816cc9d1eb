// CLIP's tokenizer: loading vocab.json, merges.txt and tokenizer_config.json, and encoding any text.
// Input: parts (fuzz_support.hpp) vocab.json, merges.txt, tokenizer_config.json, then up to 5 texts.
// An absent part leaves its file out (an empty tokenizer_config.json part too: it is optional).
//
// Most inputs spoil the vocabulary; their texts are encoded by the tokenizer of fuzz/data/clip
// instead, so that every input exercises the normalizer, the word splitter and BPE.
//
// Promise under test: loading gives a tokenizer or a diffuse::Error; encoding never fails for any
// bytes (ill-formed UTF-8 included), starts with bos and ends with eos; operator() gives exactly
// max_length ids; encode_batch gives a [texts, max_length] tensor of the same rows.

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>

#include "diffuse/tokenizers/clip_tokenizer.hpp"
#include "fuzz_support.hpp"

using namespace diffuse;

namespace {

constexpr size_t kFiles = 3;
constexpr size_t kMaxTexts = 5;

std::string describe(std::string_view text) { return "text of " + std::to_string(text.size()) + " bytes"; }

// Each text once through encode() and once through operator() at a max_length the text picks (so
// both truncation and padding happen); the first two through encode_batch.
void exercise(const ClipTokenizer& tokenizer, const std::vector<std::string>& texts, bool ids_are_contiguous) {
  for (const std::string& text : texts) {
    const std::vector<int64_t> ids = tokenizer.encode(text);
    FUZZ_CHECK(ids.size() >= 2 && ids.front() == tokenizer.bos_id && ids.back() == tokenizer.eos_id,
               describe(text));
    if (ids_are_contiguous)
      for (int64_t id : ids) FUZZ_CHECK(id >= 0 && id < tokenizer.vocab_size(), "id out of the vocabulary");
    const auto max_length = static_cast<int64_t>(2 + text.size() % 11);
    const std::vector<int64_t> row = tokenizer(text, max_length);
    FUZZ_CHECK(static_cast<int64_t>(row.size()) == max_length, describe(text));
    FUZZ_CHECK(row.front() == tokenizer.bos_id, describe(text));
    if (ids.size() >= static_cast<size_t>(max_length))
      FUZZ_CHECK(row.back() == tokenizer.eos_id && std::equal(row.begin(), row.end() - 1, ids.begin()),
                 "truncation: not the first ids then eos");
    else
      FUZZ_CHECK(std::equal(ids.begin(), ids.end(), row.begin()) &&
                     std::all_of(row.begin() + ids.size(), row.end(), [&](int64_t id) { return id == tokenizer.pad_id; }),
                 "padding: not the ids then pad");
    (void)tokenizer.token_to_id(text);
  }
  fuzz::expect_result_or_error("ClipTokenizer(max_length 1)", [&] { tokenizer(texts.front(), 1); });
  const std::vector<std::string> batch_texts(texts.begin(), texts.begin() + std::min<size_t>(texts.size(), 2));
  const at::Tensor batch = tokenizer.encode_batch(batch_texts, 5);
  FUZZ_CHECK(batch.dim() == 2 && batch.size(0) == static_cast<int64_t>(batch_texts.size()) && batch.size(1) == 5,
             "encode_batch shape");
  const std::vector<int64_t> last = tokenizer(batch_texts.back(), 5);
  FUZZ_CHECK(std::equal(last.begin(), last.end(), batch[batch.size(0) - 1].data_ptr<int64_t>()),
             "encode_batch row differs from operator()");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fuzz::ScratchFolder scratch("fuzz_clip_tokenizer");

  const auto parts = fuzz::split_parts(data, size, kFiles + kMaxTexts);
  const char* const names[kFiles] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
  for (size_t i = 0; i < kFiles; ++i) {
    if (i < parts.size() && !(i == 2 && parts[i].empty()))
      scratch.write(names[i], parts[i]);
    else
      scratch.remove(names[i]);
  }
  std::vector<std::string> texts;
  for (size_t i = kFiles; i < parts.size(); ++i) texts.emplace_back(parts[i]);
  if (texts.empty()) texts.emplace_back(parts.size() == 1 ? parts[0] : std::string_view());

  std::optional<ClipTokenizer> tokenizer;
  if (fuzz::expect_result_or_error("ClipTokenizer::from_pretrained",
                                   [&] { tokenizer = ClipTokenizer::from_pretrained(scratch.path()); })) {
    fuzz::expect_result("ClipTokenizer (fuzzed files)", [&] { exercise(*tokenizer, texts, false); });
  } else {
    // Loaded for each input, not once: its BPE cache grows with every new word, and memory that grows
    // from one input to the next makes libFuzzer's leak check run after every input (then give up).
    fuzz::expect_result("ClipTokenizer (fuzz/data/clip)", [&] {
      exercise(ClipTokenizer::from_pretrained(fuzz::data_folder() / "clip"), texts, true);
    });
  }
  return 0;
}
