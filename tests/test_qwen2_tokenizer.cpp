// Qwen2's tokenizer against the ids that transformers 5 produced for the fixture prompts
// (qwen_tokenizer_cases.json, plain and inside Qwen-Image's prompt template) and for the reference
// pipeline call (tiny-qwenimage), loaded from tokenizer.json and from vocab.json + merges.txt; its
// batches (truncation, padding, attention mask), its speed on long words, and every error a user
// can meet loading it.

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "diffuse/error.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/tokenizers/qwen2_tokenizer.hpp"
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
  static const nlohmann::json json = read_json(*test::fixtures_dir() / "qwen_tokenizer_cases.json");
  return json;
}
const nlohmann::json& reference_args() {
  static const nlohmann::json json = read_json(*test::fixtures_dir() / "tiny-qwenimage" / "reference.json");
  return json;
}

fs::path qwen_folder() { return *test::fixtures_dir() / cases()["qwen2"]["folder"].get<std::string>(); }

const Qwen2Tokenizer& qwen() {
  static const Qwen2Tokenizer tokenizer = Qwen2Tokenizer::from_pretrained(qwen_folder());
  return tokenizer;
}

// The prompt inside the template, as Python's template.format(prompt).
std::string templated(const std::string& prompt) {
  std::string text = cases()["qwen2"]["template"].get<std::string>();
  const size_t slot = text.find("{}");
  EXPECT_NE(slot, std::string::npos);
  return text.replace(slot, 2, prompt);
}

std::string printable(const std::string& text) {
  const std::string json = nlohmann::json(text).dump();
  return json.size() > 120 ? json.substr(0, 120) + "...\"" : json;
}

Ids concat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const Ids& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

Ids row(const at::Tensor& tensor, int64_t r) {
  const at::Tensor line = tensor[r].contiguous();
  return Ids(line.data_ptr<int64_t>(), line.data_ptr<int64_t>() + line.numel());
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

// Every case's plain and templated ids from `tokenizer`; returns how many cases matched.
size_t check_every_case(const Qwen2Tokenizer& tokenizer, const char* what) {
  size_t passed = 0;
  for (const auto& item : cases()["cases"]) {
    const std::string prompt = item["prompt"].get<std::string>();
    const Ids plain = tokenizer.encode(prompt);
    const Ids in_template = tokenizer.encode(templated(prompt));
    EXPECT_EQ(plain, item["input_ids"].get<Ids>()) << what << ", prompt " << printable(prompt);
    EXPECT_EQ(in_template, item["templated_input_ids"].get<Ids>()) << what << ", templated " << printable(prompt);
    passed += plain == item["input_ids"].get<Ids>() && in_template == item["templated_input_ids"].get<Ids>();
  }
  std::cout << "Qwen2 (" << what << "): " << passed << " of " << cases()["cases"].size()
            << " cases match transformers, plain and templated\n";
  return passed;
}

}  // namespace

TEST(Qwen2Tokenizer, MatchesTransformersOnEveryCase) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_EQ(cases()["qwen2"]["template"], reference_args()["prompt_template_encode"]);
  ASSERT_GE(cases()["cases"].size(), 10u);
  EXPECT_EQ(check_every_case(qwen(), "tokenizer.json"), cases()["cases"].size());
}

TEST(Qwen2Tokenizer, MatchesTheReferencePipelineCall) {
  DIFFUSE_REQUIRE_FIXTURES();
  // QwenImagePipeline: tokenizer(template.format(prompt), max_length=max_sequence_length + drop_idx,
  // padding=True, truncation=True).
  const auto& args = reference_args();
  const int64_t max_length =
      args["max_sequence_length"].get<int64_t>() + args["prompt_template_encode_start_idx"].get<int64_t>();
  const std::string prompt = args["prompts"][0].get<std::string>();
  const SafetensorsFile reference(*test::fixtures_dir() / "tiny-qwenimage" / "reference.safetensors");
  const at::Tensor expected_ids = reference.load("qwen_input_ids").to(at::kLong);
  const at::Tensor expected_mask = reference.load("qwen_attention_mask").to(at::kLong);

  const auto batch = qwen().encode_batch({templated(prompt)}, max_length, Qwen2Tokenizer::Padding::kLongest);
  EXPECT_EQ(batch.input_ids.scalar_type(), at::kLong);
  EXPECT_EQ(batch.attention_mask.scalar_type(), at::kLong);
  EXPECT_EQ(batch.input_ids.device(), at::Device(at::kCPU));
  ASSERT_EQ(batch.input_ids.sizes(), expected_ids.sizes());
  ASSERT_EQ(batch.attention_mask.sizes(), expected_mask.sizes());
  EXPECT_TRUE(at::equal(batch.input_ids, expected_ids)) << batch.input_ids << expected_ids;
  EXPECT_TRUE(at::equal(batch.attention_mask, expected_mask)) << batch.attention_mask << expected_mask;

  // With the negative prompt in the same batch: the shorter row is padded on the right, masked out,
  // and its valid length is the one diffusers kept for negative_prompt_embeds.
  const std::string negative = args["negative_prompts"][0].get<std::string>();
  const auto both = qwen().encode_batch({templated(prompt), templated(negative)}, max_length);
  ASSERT_EQ(both.input_ids.size(0), 2);
  EXPECT_TRUE(at::equal(both.input_ids[0], expected_ids[0]));
  const Ids negative_ids = qwen().encode(templated(negative));
  const int64_t drop = args["prompt_template_encode_start_idx"].get<int64_t>();
  EXPECT_EQ(static_cast<int64_t>(negative_ids.size()) - drop,
            args["tensors"]["negative_prompt_embeds"][1].get<int64_t>());
  const Ids padded_row = row(both.input_ids, 1);
  const Ids mask_row = row(both.attention_mask, 1);
  for (size_t i = 0; i < padded_row.size(); ++i) {
    const bool valid = i < negative_ids.size();
    EXPECT_EQ(padded_row[i], valid ? negative_ids[i] : qwen().pad_id) << i;
    EXPECT_EQ(mask_row[i], valid ? 1 : 0) << i;
  }
}

TEST(Qwen2Tokenizer, SpecialTokensAndSettingsFromTheFiles) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto tokenizer_json = read_json(qwen_folder() / "tokenizer.json");
  const auto config = read_json(qwen_folder() / "tokenizer_config.json");
  int64_t largest = -1;
  for (const auto& [token, id] : tokenizer_json["model"]["vocab"].items()) {
    EXPECT_EQ(qwen().token_to_id(token), id.get<int64_t>()) << token;
    largest = std::max(largest, id.get<int64_t>());
  }
  const Ids x = qwen().encode("x");
  ASSERT_EQ(x.size(), 1u);
  ASSERT_FALSE(tokenizer_json["added_tokens"].empty());
  for (const auto& added : tokenizer_json["added_tokens"]) {
    const std::string content = added["content"].get<std::string>();
    const int64_t id = added["id"].get<int64_t>();
    largest = std::max(largest, id);
    EXPECT_EQ(qwen().token_to_id(content), id) << content;
    // Matched whole wherever it stands, even inside a word.
    EXPECT_EQ(qwen().encode("x" + content + "x"), (Ids{x[0], id, x[0]})) << content;
    EXPECT_EQ(qwen().encode(content + content), (Ids{id, id})) << content;
  }
  EXPECT_EQ(qwen().vocab_size(), largest + 1);
  EXPECT_EQ(qwen().token_to_id("<|no such token|>"), -1);
  EXPECT_EQ(qwen().pad_id, qwen().token_to_id(config["pad_token"].get<std::string>()));
  EXPECT_EQ(qwen().eos_id, qwen().token_to_id(config["eos_token"].get<std::string>()));
  EXPECT_EQ(qwen().model_max_length, config["model_max_length"].get<int64_t>());
  EXPECT_EQ(qwen().padding_side, Qwen2Tokenizer::Side::kRight);
  // No bos or eos is added.
  EXPECT_TRUE(qwen().encode("").empty());
  // Text between the halves of a special token makes it ordinary text.
  const int64_t im_end = qwen().token_to_id("<|im_end|>");
  const Ids split = qwen().encode("<|im_x_end|>");
  EXPECT_EQ(std::count(split.begin(), split.end(), im_end), 0);
}

TEST(Qwen2Tokenizer, LoadsFromVocabAndMergesAlone) {
  DIFFUSE_REQUIRE_FIXTURES();
  // The layout of transformers 4 and of the published Qwen-Image repository: vocab.json, merges.txt,
  // and the added tokens in tokenizer_config.json's added_tokens_decoder (written here from
  // tokenizer.json's added_tokens).
  const fs::path dir = copy_files(qwen_folder(), "qwen2_vocab_merges", {"vocab.json", "merges.txt"});
  auto config = read_json(qwen_folder() / "tokenizer_config.json");
  nlohmann::json decoder = nlohmann::json::object();
  const auto tokenizer_json = read_json(qwen_folder() / "tokenizer.json");
  for (auto added : tokenizer_json["added_tokens"]) {
    const std::string id = std::to_string(added["id"].get<int64_t>());
    added.erase("id");
    decoder[id] = added;
  }
  config["added_tokens_decoder"] = decoder;
  write_file(dir / "tokenizer_config.json", config.dump(2));
  const Qwen2Tokenizer legacy = Qwen2Tokenizer::from_pretrained(dir);
  EXPECT_EQ(check_every_case(legacy, "vocab.json + merges.txt"), cases()["cases"].size());
  EXPECT_EQ(legacy.vocab_size(), qwen().vocab_size());
  EXPECT_EQ(legacy.pad_id, qwen().pad_id);
  EXPECT_EQ(legacy.eos_id, qwen().eos_id);

  // Without added_tokens_decoder, the special tokens that tokenizer_config.json names take the ids
  // after the vocabulary in transformers' order (bos, eos, unk, pad, then the extra ones; here bos
  // and unk are null): text without them is tokenized the same.
  write_file(dir / "tokenizer_config.json", read_json(qwen_folder() / "tokenizer_config.json").dump(2));
  const Qwen2Tokenizer numbered = Qwen2Tokenizer::from_pretrained(dir);
  const int64_t first_free = static_cast<int64_t>(read_json(qwen_folder() / "vocab.json").size());
  EXPECT_EQ(numbered.eos_id, first_free);                              // <|im_end|>
  EXPECT_EQ(numbered.token_to_id("<|endoftext|>"), first_free + 1);   // pad
  EXPECT_EQ(numbered.pad_id, first_free + 1);
  EXPECT_EQ(numbered.token_to_id("<|im_start|>"), first_free + 2);
  EXPECT_EQ(numbered.vocab_size(), qwen().vocab_size());

  // No tokenizer_config.json at all: transformers' defaults (<|endoftext|> the only special token).
  fs::remove(dir / "tokenizer_config.json");
  const Qwen2Tokenizer bare = Qwen2Tokenizer::from_pretrained(dir);
  EXPECT_EQ(bare.pad_id, first_free);
  EXPECT_EQ(bare.vocab_size(), first_free + 1);
  for (const auto& tokenizer : {&numbered, &bare})
    for (const auto& item : cases()["cases"]) {
      const std::string prompt = item["prompt"].get<std::string>();
      if (prompt.find("<|") != std::string::npos) continue;
      EXPECT_EQ(tokenizer->encode(prompt), item["input_ids"].get<Ids>()) << printable(prompt);
    }
}

TEST(Qwen2Tokenizer, PreTokenizerPieces) {
  DIFFUSE_REQUIRE_FIXTURES();
  // Each piece is merged alone, so a text's ids are its pieces' ids one after the other.
  const auto& q = qwen();
  const auto pieces = [&](std::initializer_list<const char*> parts) {
    Ids out;
    for (const char* part : parts) {
      const Ids ids = q.encode(part);
      out.insert(out.end(), ids.begin(), ids.end());
    }
    return out;
  };
  // Whitespace before a word: the run's last space goes with the word; at the end it stays whole.
  EXPECT_EQ(q.encode("a   b  "), pieces({"a", "  ", " b", "  "}));
  // Line breaks: whitespace up to the run's last line break, then the rest.
  EXPECT_EQ(q.encode("a \n \n  b"), pieces({"a", " \n \n", " ", " b"}));
  // Punctuation runs keep one leading space and take the line breaks after them.
  EXPECT_EQ(q.encode("x !?\n\ny"), pieces({"x", " !?\n\n", "y"}));
  // One non-letter joins the letters after it; digits stand alone.
  EXPECT_EQ(q.encode("cat-like 2024"), pieces({"cat", "-like", " ", "2", "0", "2", "4"}));
  // Contractions, whatever their case.
  EXPECT_EQ(q.encode("I'M it'S"), pieces({"I", "'M", " it", "'S"}));
  // NFC first: a decomposed é is the composed one.
  EXPECT_EQ(q.encode("cafe\xCC\x81"), q.encode("caf\xC3\xA9"));
  // Ill-formed UTF-8 does not throw: each bad byte is U+FFFD, as in a Python string.
  EXPECT_EQ(q.encode("a\xFF"), q.encode("a\xEF\xBF\xBD"));
}

TEST(Qwen2Tokenizer, TruncatesAndPadsBatches) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& q = qwen();
  const std::string long_text = "a painting of a squirrel eating a burger";
  const Ids full = q.encode(long_text);
  const Ids short_ids = q.encode("a photo");
  ASSERT_GT(full.size(), 6u);
  ASSERT_LT(short_ids.size(), 6u);

  // Longest: rows as long as the longest after truncation.
  auto batch = q.encode_batch({long_text, "a photo", ""}, 6);
  ASSERT_EQ(batch.input_ids.sizes(), (at::IntArrayRef{3, 6}));
  EXPECT_EQ(row(batch.input_ids, 0), Ids(full.begin(), full.begin() + 6));
  EXPECT_EQ(row(batch.attention_mask, 0), Ids(6, 1));
  Ids expected = short_ids;
  expected.resize(6, q.pad_id);
  EXPECT_EQ(row(batch.input_ids, 1), expected);
  Ids mask(6, 0);
  std::fill(mask.begin(), mask.begin() + static_cast<std::ptrdiff_t>(short_ids.size()), 1);
  EXPECT_EQ(row(batch.attention_mask, 1), mask);
  EXPECT_EQ(row(batch.input_ids, 2), Ids(6, q.pad_id));
  EXPECT_EQ(row(batch.attention_mask, 2), Ids(6, 0));

  // No max_length: model_max_length, far above these.
  batch = q.encode_batch({long_text, "a photo"});
  EXPECT_EQ(batch.input_ids.size(1), static_cast<int64_t>(full.size()));
  // Padding to max_length.
  batch = q.encode_batch({"a photo"}, 9, Qwen2Tokenizer::Padding::kMaxLength);
  EXPECT_EQ(batch.input_ids.sizes(), (at::IntArrayRef{1, 9}));
  // Only empty texts: rows of length 0.
  EXPECT_EQ(q.encode_batch({"", ""}).input_ids.sizes(), (at::IntArrayRef{2, 0}));
  EXPECT_EQ(q.encode_batch({}).input_ids.sizes(), (at::IntArrayRef{0, 0}));
  EXPECT_ERROR_CONTAINS(q.encode_batch({"a"}, -1), "max_length");
  batch = q.encode_batch({"a"}, std::nullopt, Qwen2Tokenizer::Padding::kMaxLength);
  EXPECT_EQ(batch.input_ids.size(1), q.model_max_length);
  EXPECT_ERROR_CONTAINS(q.encode_batch({"a"}, int64_t{1} << 40, Qwen2Tokenizer::Padding::kMaxLength),
                        "too long to pad to");

  // padding_side and truncation_side "left", as tokenizer_config.json can set them.
  const fs::path dir = copy_files(qwen_folder(), "qwen2_left", {"tokenizer.json"});
  auto config = read_json(qwen_folder() / "tokenizer_config.json");
  config["padding_side"] = "left";
  config["truncation_side"] = "left";
  write_file(dir / "tokenizer_config.json", config.dump());
  const Qwen2Tokenizer left = Qwen2Tokenizer::from_pretrained(dir);
  batch = left.encode_batch({long_text, "a photo"}, 6);
  EXPECT_EQ(row(batch.input_ids, 0), Ids(full.end() - 6, full.end()));
  expected = Ids(6 - short_ids.size(), q.pad_id);
  expected.insert(expected.end(), short_ids.begin(), short_ids.end());
  EXPECT_EQ(row(batch.input_ids, 1), expected);
  std::reverse(mask.begin(), mask.end());
  EXPECT_EQ(row(batch.attention_mask, 1), mask);

  // No model_max_length: no limit (transformers' int(1e30)), so max_length must be given to pad to it.
  config = read_json(qwen_folder() / "tokenizer_config.json");
  config.erase("model_max_length");
  write_file(dir / "tokenizer_config.json", config.dump());
  const Qwen2Tokenizer unlimited = Qwen2Tokenizer::from_pretrained(dir);
  EXPECT_EQ(unlimited.model_max_length, INT64_MAX);
  EXPECT_EQ(unlimited.encode_batch({long_text}).input_ids.size(1), static_cast<int64_t>(full.size()));
  EXPECT_ERROR_CONTAINS(unlimited.encode_batch({"a"}, std::nullopt, Qwen2Tokenizer::Padding::kMaxLength),
                        "padding to max_length needs a max_length");

  // pad_token null: no padding possible, as transformers refuses.
  config = read_json(qwen_folder() / "tokenizer_config.json");
  config["pad_token"] = nullptr;
  write_file(dir / "tokenizer_config.json", config.dump());
  const Qwen2Tokenizer no_pad = Qwen2Tokenizer::from_pretrained(dir);
  EXPECT_EQ(no_pad.pad_id, -1);
  EXPECT_EQ(no_pad.encode(long_text), full);
  EXPECT_ERROR_CONTAINS(no_pad.encode_batch({"a"}), "no pad token");
}

TEST(Qwen2Tokenizer, LongInputsTakeLinearTime) {
  DIFFUSE_REQUIRE_FIXTURES();
  // One word of 20000 letters is one piece for BPE; runs of spaces, digits, punctuation and line
  // breaks are the pre-tokenizer's long cases.
  const std::vector<std::pair<std::string, std::string>> inputs = {
      {"20000 letters", [] {
         std::string s;
         for (int i = 0; i < 20000; ++i) s += static_cast<char>('a' + (i * 7 + i / 13) % 26);
         return s;
       }()},
      {"20000 x 'a'", std::string(20000, 'a')},
      {"4000 x 'photo' in one word", [] {
         std::string s;
         for (int i = 0; i < 4000; ++i) s += "photo";
         return s;
       }()},
      {"20000 spaces then a word", std::string(20000, ' ') + "word"},
      {"20000 digits", std::string(20000, '7')},
      {"20000 punctuation", std::string(20000, '!')},
      {"10000 line breaks and spaces", [] {
         std::string s;
         for (int i = 0; i < 5000; ++i) s += " \n";
         return s + "x";
       }()},
      {"10000 x e + combining acute", [] {
         std::string s;
         for (int i = 0; i < 10000; ++i) s += "e\xCC\x81";
         return s;
       }()},
  };
  for (const auto& [what, text] : inputs) {
    const auto start = std::chrono::steady_clock::now();
    const Ids ids = qwen().encode(text);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "[ measured ] " << what << ": " << ids.size() << " ids in " << seconds << " s\n";
    EXPECT_LT(seconds, 5.0) << what;
    EXPECT_FALSE(ids.empty()) << what;
  }
  // BPE of a long word is what merging its pieces gives: the same word twice is twice its ids.
  const std::string word(5000, 'a');
  const Ids once = qwen().encode(word);
  EXPECT_EQ(qwen().encode(word + "<|endoftext|>" + word),
            concat({once, Ids{qwen().token_to_id("<|endoftext|>")}, once}));
}

TEST(Qwen2Tokenizer, EncodesFromSeveralThreads) {
  DIFFUSE_REQUIRE_FIXTURES();
  std::vector<std::string> prompts;
  std::vector<Ids> expected;
  for (const auto& item : cases()["cases"]) {
    prompts.push_back(templated(item["prompt"].get<std::string>()));
    expected.push_back(item["templated_input_ids"].get<Ids>());
  }
  const Qwen2Tokenizer tokenizer = Qwen2Tokenizer::from_pretrained(qwen_folder());
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < 10; ++round)
        for (size_t i = 0; i < prompts.size(); ++i) mismatches[t] += tokenizer.encode(prompts[i]) != expected[i];
    });
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(Qwen2Tokenizer, LoadErrorsNameTheFile) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto load = [](const fs::path& dir) { Qwen2Tokenizer::from_pretrained(dir); };
  {
    const fs::path dir = test::temporary_folder("qwen2_empty");
    EXPECT_ERROR_CONTAINS(load(dir), "neither tokenizer.json nor vocab.json");
  }
  {
    const fs::path dir = copy_files(qwen_folder(), "qwen2_bad_json", {"tokenizer_config.json"});
    const auto original = read_json(qwen_folder() / "tokenizer.json");
    write_file(dir / "tokenizer.json", "{\"model\": ");
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer.json: not valid JSON");
    write_file(dir / "tokenizer.json", "{\"version\": \"1.0\"}");
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer.json: no 'model' object");
    auto broken = original;
    broken["model"]["type"] = "WordPiece";
    write_file(dir / "tokenizer.json", broken.dump());
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer.json: Qwen2's tokenizer is a BPE model");
    broken = original;
    broken["model"]["vocab"]["e"] = -3;
    write_file(dir / "tokenizer.json", broken.dump());
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer.json: model.vocab[\"e\"]: the id should be");
    broken = original;
    broken["model"]["merges"].push_back(nlohmann::json::array({"e", "\xE6\x9D\xB1"}));
    write_file(dir / "tokenizer.json", broken.dump());
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer.json model.merges:" +
                                         std::to_string(broken["model"]["merges"].size()) + ": merge token");
    broken = original;
    broken["model"]["merges"][0] = "e n x";
    write_file(dir / "tokenizer.json", broken.dump());
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer.json model.merges:1: expected two tokens");
    broken = original;
    broken["model"]["merges"][0] = 7;
    write_file(dir / "tokenizer.json", broken.dump());
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer.json model.merges:1: expected [\"left\", \"right\"]");
    broken = original;
    broken["added_tokens"][0].erase("id");
    write_file(dir / "tokenizer.json", broken.dump());
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer.json: added_tokens[0]: no 'id'");
    broken = original;
    broken["added_tokens"][1]["special"] = "yes";
    write_file(dir / "tokenizer.json", broken.dump());
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer.json: added_tokens[1]: 'special' should be true or false");
  }
  {
    const fs::path dir = copy_files(qwen_folder(), "qwen2_no_merges", {"vocab.json"});
    EXPECT_ERROR_CONTAINS(load(dir), "merges.txt: BPE merges not found");
    write_file(dir / "merges.txt", "#version: 0.2\ne n\nthree tokens here\n");
    EXPECT_ERROR_CONTAINS(load(dir), "merges.txt:3: expected two tokens");
    write_file(dir / "merges.txt", "#version: 0.2\ne n\nq \xE6\x9D\xB1\n");
    EXPECT_ERROR_CONTAINS(load(dir), "merges.txt:3: merge token");
    write_file(dir / "vocab.json", "[1, 2]");
    EXPECT_ERROR_CONTAINS(load(dir), "vocab.json: expected a JSON object");
  }
  {
    const fs::path dir = copy_files(qwen_folder(), "qwen2_bad_config", {"vocab.json", "merges.txt"});
    write_file(dir / "tokenizer_config.json", "{\"added_tokens_decoder\": {\"x1\": {\"content\": \"<a>\"}}}");
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer_config.json: added_tokens_decoder[\"x1\"]: the key should be a token id");
    write_file(dir / "tokenizer_config.json", "{\"added_tokens_decoder\": {\"5000\": {\"text\": \"<a>\"}}}");
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer_config.json: added_tokens_decoder[\"5000\"]: expected an added token");
    write_file(dir / "tokenizer_config.json", "{\"padding_side\": \"middle\"}");
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer_config.json: 'padding_side' should be \"right\" or \"left\"");
    write_file(dir / "tokenizer_config.json", "{\"model_max_length\": \"long\"}");
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer_config.json: 'model_max_length'");
    write_file(dir / "tokenizer_config.json", "{\"pad_token\": 3}");
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer_config.json: 'pad_token'");
    write_file(dir / "tokenizer_config.json", "{\"add_prefix_space\": \"no\"}");
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer_config.json: 'add_prefix_space' should be true or false");
    write_file(dir / "tokenizer_config.json", "{");
    EXPECT_ERROR_CONTAINS(load(dir), "tokenizer_config.json: not valid JSON");
  }
}

TEST(Qwen2Tokenizer, AddedTokenFlags) {
  DIFFUSE_REQUIRE_FIXTURES();
  // lstrip / rstrip take the whitespace around the token; single_word refuses a match inside a word;
  // a normalized token is looked for in the NFC text. (tokenizers' AddedToken semantics.)
  const fs::path dir = copy_files(qwen_folder(), "qwen2_flags", {"vocab.json", "merges.txt"});
  const nlohmann::json config = {
      {"added_tokens_decoder",
       {{"2000", {{"content", "<L>"}, {"lstrip", true}, {"special", true}, {"normalized", false}}},
        {"2001", {{"content", "<R>"}, {"rstrip", true}, {"special", true}, {"normalized", false}}},
        {"2002", {{"content", "cat"}, {"single_word", true}, {"special", false}, {"normalized", false}}},
        {"2003", {{"content", "caf\xC3\xA9"}, {"special", false}, {"normalized", true}}}}},
      {"pad_token", "<L>"}};
  write_file(dir / "tokenizer_config.json", config.dump());
  const Qwen2Tokenizer t = Qwen2Tokenizer::from_pretrained(dir);
  const Ids a = t.encode("a");
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(t.encode("a  <L>a"), (Ids{a[0], 2000, a[0]}));
  EXPECT_EQ(t.encode("a<R>  a"), (Ids{a[0], 2001, a[0]}));
  EXPECT_EQ(t.encode("a cat a"), concat({a, t.encode(" "), Ids{2002}, t.encode(" a")}));
  EXPECT_EQ(t.encode("concatenate"), qwen().encode("concatenate"));
  EXPECT_EQ(t.encode("cafe\xCC\x81!"), concat({Ids{2003}, t.encode("!")}));
  EXPECT_EQ(t.pad_id, 2000);
  // <|endoftext|>, transformers' default eos and unk, takes the next id.
  EXPECT_EQ(t.token_to_id("<|endoftext|>"), 2004);
  EXPECT_EQ(t.vocab_size(), 2005);
}
