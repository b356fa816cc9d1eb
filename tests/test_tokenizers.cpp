// CLIP's and T5's tokenizers against the ids that transformers 5 produced for the fixture prompts
// (tokenizer_cases.json) and for the reference pipeline call, their special tokens against the
// tokenizer.json that transformers saved, and every error a user can meet loading them.

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "diffuse/error.hpp"
#include "diffuse/tokenizers/clip_tokenizer.hpp"
#include "diffuse/tokenizers/t5_tokenizer.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;
using Ids = std::vector<int64_t>;

namespace {

nlohmann::json read_json(const fs::path& file) {
  std::ifstream in(file);
  EXPECT_TRUE(in) << file;
  return nlohmann::json::parse(in);
}

const nlohmann::json& cases() {
  static const nlohmann::json json = read_json(*test::fixtures_dir() / "tokenizer_cases.json");
  return json;
}

fs::path clip_folder() { return test::tiny_flux_pipeline() / "tokenizer"; }
fs::path t5_folder() { return test::tiny_flux_pipeline() / "tokenizer_2"; }

const ClipTokenizer& clip() {
  static const ClipTokenizer tokenizer = ClipTokenizer::from_pretrained(clip_folder());
  return tokenizer;
}
const T5Tokenizer& t5() {
  static const T5Tokenizer tokenizer = T5Tokenizer::from_pretrained(t5_folder());
  return tokenizer;
}

std::string printable(const std::string& text) { return nlohmann::json(text).dump(); }

Ids without_padding(const Ids& ids, int64_t pad, size_t keep) {
  Ids out = ids;
  while (out.size() > keep && out.back() == pad) out.pop_back();
  return out;
}

template <typename Load>
void expect_error_containing(Load load, const std::string& part) {
  try {
    load();
    ADD_FAILURE() << "expected an error containing '" << part << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

fs::path copy_files(const fs::path& from, const std::string& name, const std::vector<std::string>& files) {
  fs::path dir = test::temporary_folder(name);
  for (const auto& file : files) fs::copy_file(from / file, dir / file);
  return dir;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

}  // namespace

// ---- CLIP ----------------------------------------------------------------------------------------

TEST(ClipTokenizer, MatchesTransformersOnEveryCase) {
  DIFFUSE_REQUIRE_FIXTURES();
  const int64_t max_length = cases()["clip"]["max_length"].get<int64_t>();
  size_t passed = 0;
  for (const auto& item : cases()["cases"]) {
    const std::string prompt = item["prompt"].get<std::string>();
    const Ids expected = item["clip_input_ids"].get<Ids>();
    const Ids actual = clip()(prompt, max_length);
    EXPECT_EQ(actual, expected) << "prompt " << printable(prompt);
    // Untruncated, the same tokens up to the end token (the padding is the end token too).
    const Ids full = clip().encode(prompt);
    if (full.size() <= static_cast<size_t>(max_length))
      EXPECT_EQ(full, without_padding(expected, clip().pad_id, full.size())) << "prompt " << printable(prompt);
    passed += actual == expected;
  }
  RecordProperty("cases_passed", static_cast<int>(passed));
  std::cout << "CLIP: " << passed << " of " << cases()["cases"].size() << " cases match transformers\n";
  EXPECT_EQ(passed, cases()["cases"].size());
}

TEST(ClipTokenizer, MatchesTheReferenceCall) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& reference = test::tiny_flux_reference();
  const at::Tensor expected = reference.load("clip_input_ids");
  const at::Tensor actual = clip().encode_batch({"a photo of a dog with cat-like look"}, 77);
  EXPECT_EQ(actual.scalar_type(), at::kLong);
  ASSERT_EQ(actual.sizes(), expected.sizes());
  EXPECT_TRUE(at::equal(actual, expected.to(at::kLong))) << actual << expected;
}

TEST(ClipTokenizer, SpecialTokensAndConfigAsTransformersSavedThem) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto tokenizer_json = read_json(clip_folder() / "tokenizer.json");
  EXPECT_EQ(clip().vocab_size(), static_cast<int64_t>(tokenizer_json["model"]["vocab"].size()));
  for (const auto& added : tokenizer_json["added_tokens"]) {
    const std::string content = added["content"].get<std::string>();
    EXPECT_EQ(clip().token_to_id(content), added["id"].get<int64_t>()) << content;
    // Special tokens in the text are split out whole.
    EXPECT_EQ(clip().encode("x" + content + "x"), (Ids{clip().bos_id, clip().encode("x")[1], added["id"].get<int64_t>(),
                                                       clip().encode("x")[1], clip().eos_id}));
  }
  EXPECT_EQ(clip().bos_id, 49406);
  EXPECT_EQ(clip().eos_id, 49407);
  EXPECT_EQ(clip().pad_id, tokenizer_json["padding"]["pad_id"].get<int64_t>());
  EXPECT_EQ(clip().model_max_length, 77);
}

TEST(ClipTokenizer, TruncatesKeepingTheEndTokenAndPads) {
  DIFFUSE_REQUIRE_FIXTURES();
  const Ids full = clip().encode("a painting of a squirrel eating a burger");
  ASSERT_GT(full.size(), 5u);
  const Ids five = clip()("a painting of a squirrel eating a burger", 5);
  EXPECT_EQ(five, (Ids{full[0], full[1], full[2], full[3], clip().eos_id}));
  const Ids two = clip()("a painting", 2);
  EXPECT_EQ(two, (Ids{clip().bos_id, clip().eos_id}));
  const Ids padded = clip()("a", 6);
  EXPECT_EQ(padded, (Ids{clip().bos_id, full[1], clip().eos_id, clip().pad_id, clip().pad_id, clip().pad_id}));
  expect_error_containing([] { clip()("a", 1); }, "max_length");

  const at::Tensor batch = clip().encode_batch({"a photo", "", "UPPER lower"}, 77);
  EXPECT_EQ(batch.sizes(), (at::IntArrayRef{3, 77}));
  EXPECT_EQ(batch.scalar_type(), at::kLong);
  for (int64_t row = 0; row < 3; ++row) EXPECT_EQ(batch[row][0].item<int64_t>(), clip().bos_id);
}

TEST(ClipTokenizer, NormalizesUnicodeAndWhitespace) {
  DIFFUSE_REQUIRE_FIXTURES();
  // NFC: a decomposed é is the composed one; case and whitespace runs do not matter.
  EXPECT_EQ(clip().encode("cafe\xCC\x81"), clip().encode("caf\xC3\xA9"));
  EXPECT_EQ(clip().encode("CAF\xC3\x89"), clip().encode("caf\xC3\xA9"));
  EXPECT_EQ(clip().encode(" a\t\n\xE3\x80\x80photo  "), clip().encode("a photo"));
  // Ill-formed UTF-8 does not throw: each bad byte is U+FFFD, as it would be in a Python string.
  EXPECT_EQ(clip().encode("a\xFF"), clip().encode("a\xEF\xBF\xBD"));
}

TEST(ClipTokenizer, EncodesFromSeveralThreads) {
  DIFFUSE_REQUIRE_FIXTURES();
  // One tokenizer shared by threads (its word cache is locked) gives every thread the same ids.
  std::vector<std::string> prompts;
  std::vector<Ids> expected;
  for (const auto& item : cases()["cases"]) {
    prompts.push_back(item["prompt"].get<std::string>());
    expected.push_back(item["clip_input_ids"].get<Ids>());
  }
  const ClipTokenizer tokenizer = ClipTokenizer::from_pretrained(clip_folder());
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round)
        for (size_t i = 0; i < prompts.size(); ++i) mismatches[t] += tokenizer(prompts[i]) != expected[i];
    });
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(ClipTokenizer, WorksWithoutTokenizerConfig) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = copy_files(clip_folder(), "clip_no_config", {"vocab.json", "merges.txt"});
  const ClipTokenizer plain = ClipTokenizer::from_pretrained(dir);
  for (const auto& item : cases()["cases"]) {
    const std::string prompt = item["prompt"].get<std::string>();
    EXPECT_EQ(plain(prompt), item["clip_input_ids"].get<Ids>()) << printable(prompt);
  }
}

TEST(ClipTokenizer, LoadErrorsNameTheFile) {
  DIFFUSE_REQUIRE_FIXTURES();
  {
    const fs::path dir = copy_files(clip_folder(), "clip_no_vocab", {"merges.txt"});
    expect_error_containing([&] { ClipTokenizer::from_pretrained(dir); }, "vocab.json");
  }
  {
    const fs::path dir = copy_files(clip_folder(), "clip_no_merges", {"vocab.json"});
    expect_error_containing([&] { ClipTokenizer::from_pretrained(dir); }, "merges.txt");
  }
  {
    const fs::path dir = copy_files(clip_folder(), "clip_bad_vocab", {"merges.txt"});
    write_file(dir / "vocab.json", "{\"a\": 1, ");
    expect_error_containing([&] { ClipTokenizer::from_pretrained(dir); }, "vocab.json: not valid JSON");
    write_file(dir / "vocab.json", "[1, 2, 3]");
    expect_error_containing([&] { ClipTokenizer::from_pretrained(dir); }, "vocab.json: expected a JSON object");
    write_file(dir / "vocab.json", "{\"a\": \"one\"}");
    expect_error_containing([&] { ClipTokenizer::from_pretrained(dir); }, "vocab.json: the id of token \"a\"");
  }
  {
    const fs::path dir = copy_files(clip_folder(), "clip_bad_merges", {"vocab.json"});
    write_file(dir / "merges.txt", "#version: 0.2\ni n\nthree tokens here\n");
    expect_error_containing([&] { ClipTokenizer::from_pretrained(dir); }, "merges.txt:3: expected two tokens");
    write_file(dir / "merges.txt", "#version: 0.2\ni n\n\xE6\x9D\xB1 \xE4\xBA\xAC\n");
    expect_error_containing([&] { ClipTokenizer::from_pretrained(dir); }, "merges.txt:3: merge token");
  }
  {
    const fs::path dir = copy_files(clip_folder(), "clip_bad_config", {"vocab.json", "merges.txt"});
    write_file(dir / "tokenizer_config.json", "{\"bos_token\": \"<|no such token|>\"}");
    expect_error_containing([&] { ClipTokenizer::from_pretrained(dir); }, "tokenizer_config.json: special token");
    write_file(dir / "tokenizer_config.json", "{\"model_max_length\": \"long\"}");
    expect_error_containing([&] { ClipTokenizer::from_pretrained(dir); }, "tokenizer_config.json: 'model_max_length'");
  }
}

// ---- T5 ------------------------------------------------------------------------------------------

TEST(T5Tokenizer, MatchesTransformersOnEveryCase) {
  DIFFUSE_REQUIRE_FIXTURES();
  const int64_t max_length = cases()["t5"]["max_length"].get<int64_t>();
  size_t passed = 0;
  for (const auto& item : cases()["cases"]) {
    const std::string prompt = item["prompt"].get<std::string>();
    const Ids truncated = t5()(prompt, max_length);
    const Ids full = t5().encode(prompt);
    EXPECT_EQ(truncated, item["t5_input_ids_max32"].get<Ids>()) << "prompt " << printable(prompt);
    EXPECT_EQ(full, item["t5_input_ids_untruncated"].get<Ids>()) << "prompt " << printable(prompt);
    passed += truncated == item["t5_input_ids_max32"].get<Ids>() && full == item["t5_input_ids_untruncated"].get<Ids>();
  }
  std::cout << "T5: " << passed << " of " << cases()["cases"].size() << " cases match transformers\n";
  EXPECT_EQ(passed, cases()["cases"].size());
}

TEST(T5Tokenizer, MatchesTheReferenceCall) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& reference = test::tiny_flux_reference();
  const at::Tensor expected = reference.load("t5_input_ids");
  const at::Tensor actual = t5().encode_batch({"a photo of a dog with cat-like look"}, 32);
  EXPECT_EQ(actual.scalar_type(), at::kLong);
  ASSERT_EQ(actual.sizes(), expected.sizes());
  EXPECT_TRUE(at::equal(actual, expected.to(at::kLong))) << actual << expected;
}

TEST(T5Tokenizer, SpecialTokensAndVocabularyAsTransformersSavedThem) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto tokenizer_json = read_json(t5_folder() / "tokenizer.json");
  const auto& vocab = tokenizer_json["model"]["vocab"];
  EXPECT_EQ(t5().vocab_size(), static_cast<int64_t>(vocab.size()));
  for (size_t id = 0; id < vocab.size(); ++id)
    EXPECT_EQ(t5().token_to_id(vocab[id][0].get<std::string>()), static_cast<int64_t>(id)) << vocab[id][0];
  EXPECT_EQ(tokenizer_json["added_tokens"].size(), 103u);
  const Ids x = t5().encode("x");  // ▁ x </s>
  ASSERT_EQ(x.size(), 3u);
  for (const auto& added : tokenizer_json["added_tokens"]) {
    const std::string content = added["content"].get<std::string>();
    const int64_t id = added["id"].get<int64_t>();
    // Split out of the text whole, wherever it stands.
    EXPECT_EQ(t5().encode("x" + content + "x"), (Ids{x[0], x[1], id, x[0], x[1], t5().eos_id})) << content;
  }
  EXPECT_EQ(t5().token_to_id("<extra_id_0>"), 1099);
  EXPECT_EQ(t5().token_to_id("<extra_id_99>"), 1000);
  EXPECT_EQ(t5().eos_id, 1);
  EXPECT_EQ(t5().pad_id, 0);
  EXPECT_EQ(t5().unk_id, 2);
  EXPECT_EQ(t5().model_max_length, 512);
}

TEST(T5Tokenizer, WhitespaceAndNormalization) {
  DIFFUSE_REQUIRE_FIXTURES();
  // Whitespace runs collapse and the ends are trimmed, whatever the whitespace characters
  // (U+0085 too, which the model's character map keeps: the split happens after normalizing).
  const Ids plain = t5().encode("a photo");
  EXPECT_EQ(t5().encode("  a \t\n photo\r\n"), plain);
  EXPECT_EQ(t5().encode("a\xC2\x85photo"), plain);
  EXPECT_EQ(t5().encode("a\xE3\x80\x80photo"), plain);  // ideographic space, NFKC'd to a space
  // NFKC folds full-width letters.
  EXPECT_EQ(t5().encode("\xEF\xBD\x81 photo"), plain);
  // Consecutive unknown characters are one <unk>.
  EXPECT_EQ(t5().encode("\xE6\x9D\xB1\xE4\xBA\xAC"), (Ids{3, t5().unk_id, t5().eos_id}));
  EXPECT_EQ(t5().encode(""), Ids{t5().eos_id});
  EXPECT_EQ(t5().encode("   "), Ids{t5().eos_id});
}

TEST(T5Tokenizer, TruncatesKeepingTheEndTokenAndPads) {
  DIFFUSE_REQUIRE_FIXTURES();
  const Ids full = t5().encode("a painting of a squirrel");
  ASSERT_GT(full.size(), 4u);
  EXPECT_EQ(t5()("a painting of a squirrel", 4), (Ids{full[0], full[1], full[2], t5().eos_id}));
  EXPECT_EQ(t5()("a painting", 1), Ids{t5().eos_id});
  expect_error_containing([] { t5()("a", 0); }, "max_length");
  const at::Tensor batch = t5().encode_batch({"a", "a painting of a squirrel eating a burger"}, 8);
  EXPECT_EQ(batch.sizes(), (at::IntArrayRef{2, 8}));
  EXPECT_EQ(batch[0][2].item<int64_t>(), t5().pad_id);
  EXPECT_EQ(batch[1][7].item<int64_t>(), t5().eos_id);
}

TEST(T5Tokenizer, WorksWithoutTokenizerConfig) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = copy_files(t5_folder(), "t5_no_config", {"spiece.model"});
  const T5Tokenizer plain = T5Tokenizer::from_pretrained(dir);
  for (const auto& item : cases()["cases"]) {
    const std::string prompt = item["prompt"].get<std::string>();
    EXPECT_EQ(plain.encode(prompt), item["t5_input_ids_untruncated"].get<Ids>()) << printable(prompt);
  }
}

namespace {

// A SentencePiece ModelProto written by hand: one <unk> piece, and a trainer_spec of `model_type`.
std::string tiny_model_proto(int model_type, bool with_piece) {
  const auto field = [](int number, int wire, const std::string& payload) {
    std::string out(1, static_cast<char>(number << 3 | wire));
    if (wire == 2) out += static_cast<char>(payload.size());
    return out + payload;
  };
  const std::string score("\0\0\0\0", 4);  // 0.0f
  const std::string piece = field(1, 2, "<unk>") + field(2, 5, score) + field(3, 0, std::string(1, 2));
  const std::string trainer = field(3, 0, std::string(1, static_cast<char>(model_type)));
  return (with_piece ? field(1, 2, piece) : "") + field(2, 2, trainer);
}

}  // namespace

TEST(T5Tokenizer, ReadsAHandWrittenModelAndRejectsWhatItCannotRun) {
  const fs::path dir = test::temporary_folder("t5_hand_written");
  write_file(dir / "spiece.model", tiny_model_proto(/*unigram*/ 1, true));
  // transformers' default special tokens </s> and <pad> are not pieces of this model.
  expect_error_containing([&] { T5Tokenizer::from_pretrained(dir); }, "special token '<pad>' is neither a piece");
  write_file(dir / "tokenizer_config.json",
             "{\"eos_token\": \"<unk>\", \"pad_token\": \"<unk>\", \"extra_ids\": 2}");
  const T5Tokenizer tiny = T5Tokenizer::from_pretrained(dir);
  EXPECT_EQ(tiny.vocab_size(), 3);  // <unk> and 2 extra ids
  EXPECT_EQ(tiny.token_to_id("<extra_id_0>"), 2);
  // No piece covers anything: each word is one fused <unk>.
  EXPECT_EQ(tiny.encode("ab cd<extra_id_1>"), (Ids{0, 0, 1, 0}));
  write_file(dir / "spiece.model", tiny_model_proto(/*bpe*/ 2, true));
  expect_error_containing([&] { T5Tokenizer::from_pretrained(dir); }, "needs a unigram SentencePiece model");
  write_file(dir / "spiece.model", tiny_model_proto(1, false));
  expect_error_containing([&] { T5Tokenizer::from_pretrained(dir); }, "spiece.model: not a SentencePiece model (no pieces)");
}

TEST(T5Tokenizer, LoadErrorsNameTheFile) {
  DIFFUSE_REQUIRE_FIXTURES();
  {
    const fs::path dir = copy_files(t5_folder(), "t5_no_model", {"tokenizer_config.json"});
    expect_error_containing([&] { T5Tokenizer::from_pretrained(dir); }, "spiece.model: SentencePiece model not found");
  }
  {
    const fs::path dir = test::temporary_folder("t5_bad_model");
    write_file(dir / "spiece.model", "this is not a protobuf");
    expect_error_containing([&] { T5Tokenizer::from_pretrained(dir); }, "spiece.model: not a SentencePiece model");
  }
  {
    const fs::path dir = copy_files(t5_folder(), "t5_bad_config", {"spiece.model"});
    write_file(dir / "tokenizer_config.json", "{\"eos_token\": \"<eos-not-there>\"}");
    expect_error_containing([&] { T5Tokenizer::from_pretrained(dir); }, "tokenizer_config.json: special token");
    write_file(dir / "tokenizer_config.json", "{\"extra_ids\": ");
    expect_error_containing([&] { T5Tokenizer::from_pretrained(dir); }, "tokenizer_config.json: not valid JSON");
  }
}
