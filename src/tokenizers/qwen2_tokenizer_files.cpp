// Qwen2Tokenizer::from_pretrained: the model and added tokens from tokenizer.json, or from
// vocab.json + merges.txt + tokenizer_config.json's added_tokens_decoder; special tokens and the
// batch settings from tokenizer_config.json.

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>

#include "diffuse/error.hpp"
#include "io/json_text.hpp"
#include "tokenizers/qwen2_tokenizer_impl.hpp"
#include "tokenizers/unicode.hpp"

namespace diffuse {

namespace {

using tokenizers::TokenizerConfig;

// An added token with the flags of tokenizers' AddedToken.
struct AddedToken {
  std::string content;
  int64_t id = -1;
  bool special = false;
  bool normalized = false;
  tokenizers::SpecialTokens::Options options;
};

std::string quoted(const std::string& text) { return nlohmann::json(text).dump(); }

bool flag(const nlohmann::json& object, const char* key, bool fallback, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw Error(where + ": '" + key + "' should be true or false, got " + json_for_message(*it));
  return it->get<bool>();
}

int64_t token_id(const nlohmann::json& value, const std::string& where) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > tokenizers::kMaxTokenId)
    throw Error(where + ": the id should be an integer in [0, 2^32), got " + json_for_message(value));
  return value.get<int64_t>();
}

// An AddedToken object ({"content": ..., "special": ..., ...}); `where` names it in errors.
AddedToken parse_added_token(const nlohmann::json& value, const std::string& where) {
  if (!value.is_object() || !value.contains("content") || !value["content"].is_string())
    throw Error(where + ": expected an added token {\"content\": ..., ...}, got " + json_for_message(value));
  AddedToken token;
  token.content = value["content"].get<std::string>();
  token.special = flag(value, "special", false, where);
  token.normalized = flag(value, "normalized", !token.special, where);
  token.options.single_word = flag(value, "single_word", false, where);
  token.options.lstrip = flag(value, "lstrip", false, where);
  token.options.rstrip = flag(value, "rstrip", false, where);
  return token;
}

// What the files give: the BPE model and the added tokens, in the order they are added.
struct Files {
  tokenizers::Vocab vocab;
  std::vector<tokenizers::MergeRule> merges;
  std::string merges_source;
  std::string vocab_name;
  std::vector<AddedToken> added;
};

Files read_tokenizer_json(const std::filesystem::path& file) {
  const std::string name = file.string();
  const nlohmann::json json = tokenizers::read_json_file(file);
  if (!json.is_object()) throw Error(name + ": expected a JSON object");
  auto model = json.find("model");
  if (model == json.end() || !model->is_object()) throw Error(name + ": no 'model' object");
  if (auto type = model->find("type"); type != model->end() && *type != "BPE")
    throw Error(name + ": Qwen2's tokenizer is a BPE model, but model.type is " + json_for_message(*type));

  Files files;
  files.vocab_name = name + " model.vocab";
  auto vocab = model->find("vocab");
  if (vocab == model->end() || !vocab->is_object() || vocab->empty())
    throw Error(name + ": model.vocab should be a non-empty object of token -> id");
  files.vocab.reserve(vocab->size());
  for (const auto& [token, id] : vocab->items())
    files.vocab.emplace(token, token_id(id, name + ": model.vocab[" + quoted(token) + "]"));

  // Merges: "left right" strings (older files) or ["left", "right"] pairs.
  files.merges_source = name + " model.merges";
  auto merges = model->find("merges");
  if (merges == model->end() || !merges->is_array()) throw Error(name + ": model.merges should be a list");
  files.merges.reserve(merges->size());
  size_t index = 0;
  for (const auto& merge : *merges) {
    ++index;
    tokenizers::MergeRule rule;
    rule.line = index;
    if (merge.is_string()) {
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos)
        throw Error(files.merges_source + ":" + std::to_string(index) + ": expected two tokens separated by a space, got " +
                    quoted(text));
      rule.left = text.substr(0, space);
      rule.right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      rule.left = merge[0].get<std::string>();
      rule.right = merge[1].get<std::string>();
    } else {
      throw Error(files.merges_source + ":" + std::to_string(index) + ": expected [\"left\", \"right\"], got " +
                  json_for_message(merge));
    }
    files.merges.push_back(std::move(rule));
  }

  if (auto added = json.find("added_tokens"); added != json.end() && !added->is_null()) {
    if (!added->is_array()) throw Error(name + ": added_tokens should be a list");
    for (size_t i = 0; i < added->size(); ++i) {
      const std::string where = name + ": added_tokens[" + std::to_string(i) + "]";
      AddedToken token = parse_added_token((*added)[i], where);
      if (!(*added)[i].contains("id")) throw Error(where + ": no 'id'");
      token.id = token_id((*added)[i]["id"], where);
      files.added.push_back(std::move(token));
    }
  }
  return files;
}

Files read_vocab_and_merges(const std::filesystem::path& folder, const TokenizerConfig& config) {
  Files files;
  const auto vocab_file = folder / "vocab.json";
  if (!std::filesystem::exists(vocab_file))
    throw Error(folder.string() + ": no Qwen2 tokenizer here: neither tokenizer.json nor vocab.json (with merges.txt)");
  files.vocab = tokenizers::read_vocab_json(vocab_file, "Qwen2 vocabulary");
  files.vocab_name = vocab_file.string();
  const auto merges_file = folder / "merges.txt";
  files.merges = tokenizers::read_merges_txt(merges_file);
  files.merges_source = merges_file.string();

  // tokenizer_config.json's added_tokens_decoder: {"<id>": AddedToken, ...}, in id order.
  auto decoder = config.json.find("added_tokens_decoder");
  if (decoder != config.json.end() && !decoder->is_null()) {
    const std::string name = config.file.string();
    if (!decoder->is_object()) throw Error(name + ": added_tokens_decoder should be an object of id -> token");
    for (const auto& [key, value] : decoder->items()) {
      const std::string where = name + ": added_tokens_decoder[" + quoted(key) + "]";
      if (key.empty() || key.size() > 10 || !std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; }))
        throw Error(where + ": the key should be a token id");
      AddedToken token = parse_added_token(value, where);
      token.id = token_id(std::stoll(key), where);
      files.added.push_back(std::move(token));
    }
    std::stable_sort(files.added.begin(), files.added.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  }
  return files;
}

// A special token of tokenizer_config.json: its content when given, transformers' Qwen2 default when
// the key is absent, nothing when it is null.
std::optional<std::string> special_token(const TokenizerConfig& config, const char* key, const char* fallback) {
  if (!config.json.contains(key)) return fallback ? std::optional<std::string>(fallback) : std::nullopt;
  return config.token(key);
}

Qwen2Tokenizer::Side side(const TokenizerConfig& config, const char* key) {
  auto it = config.json.find(key);
  if (it == config.json.end() || it->is_null() || *it == "right") return Qwen2Tokenizer::Side::kRight;
  if (*it == "left") return Qwen2Tokenizer::Side::kLeft;
  throw Error(config.file.string() + ": '" + key + "' should be \"right\" or \"left\", got " + json_for_message(*it));
}

}  // namespace

Qwen2Tokenizer Qwen2Tokenizer::from_pretrained(const std::filesystem::path& folder) {
  const auto config = TokenizerConfig::load(folder);
  const auto tokenizer_json = folder / "tokenizer.json";
  Files files = std::filesystem::exists(tokenizer_json) ? read_tokenizer_json(tokenizer_json)
                                                         : read_vocab_and_merges(folder, config);

  auto impl = std::make_shared<Impl>();
  impl->vocab = std::move(files.vocab);
  impl->merges = tokenizers::BpeMerges::from_rules(files.merges, impl->vocab, files.merges_source, files.vocab_name);
  const auto& alphabet = tokenizers::byte_level_alphabet();
  for (int b = 0; b < 256; ++b) {
    auto it = impl->vocab.find(alphabet[b]);
    impl->byte_id[b] = it == impl->vocab.end() ? -1 : it->second;
  }
  for (const auto& [token, id] : impl->vocab) impl->max_id = std::max(impl->max_id, id);

  // Added tokens as tokenizers' AddedVocabulary numbers them: a token of the vocabulary keeps its id;
  // any other takes the next one after the vocabulary and the added tokens so far.
  std::vector<AddedToken> added = std::move(files.added);
  const auto vocab_count = static_cast<int64_t>(impl->vocab.size());
  int64_t max_added = -1;
  for (const auto& token : added) max_added = std::max(max_added, token.id);
  const auto add_special = [&](const std::string& content) {
    if (content.empty() || impl->added.count(content) ||
        std::any_of(added.begin(), added.end(), [&](const AddedToken& t) { return t.content == content; }))
      return;
    AddedToken token;
    token.content = content;
    token.special = true;
    if (auto it = impl->vocab.find(content); it != impl->vocab.end()) {
      token.id = it->second;
    } else {
      token.id = max_added < 0 ? vocab_count : (max_added >= vocab_count ? max_added + 1 : vocab_count);
    }
    max_added = std::max(max_added, token.id);
    added.push_back(std::move(token));
  };

  // transformers' Qwen2Tokenizer: unk, eos and pad default to <|endoftext|>, no bos; then the extra
  // special tokens, in transformers' order of the special-token attributes.
  const auto bos = special_token(config, "bos_token", nullptr);
  const auto eos = special_token(config, "eos_token", "<|endoftext|>");
  const auto unk = special_token(config, "unk_token", "<|endoftext|>");
  const auto pad = special_token(config, "pad_token", "<|endoftext|>");
  for (const auto& token : {bos, eos, unk, pad})
    if (token) add_special(*token);
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"})
    for (const auto& token : config.token_list(key)) add_special(token);

  for (const AddedToken& token : added) {
    if (token.content.empty()) continue;  // tokenizers ignores them
    impl->added[token.content] = token.id;
    impl->max_id = std::max(impl->max_id, token.id);
    // A normalized token is looked for in the NFC text, as its own NFC form.
    if (token.normalized)
      impl->normalized_added.add(unicode::encode_utf8(unicode::nfc(unicode::decode_utf8(token.content))), token.id,
                                 token.options);
    else
      impl->raw_added.add(token.content, token.id, token.options);
  }

  // The BPE model's unknown token is looked up in its own vocabulary only.
  if (unk) {
    auto it = impl->vocab.find(*unk);
    impl->unk_id = it == impl->vocab.end() ? -1 : it->second;
  }
  impl->add_prefix_space = flag(config.json, "add_prefix_space", false, config.file.string());

  Qwen2Tokenizer tokenizer;
  const auto id_of = [&](const std::string& token) -> int64_t {
    if (auto it = impl->added.find(token); it != impl->added.end()) return it->second;
    if (auto it = impl->vocab.find(token); it != impl->vocab.end()) return it->second;
    return -1;  // an empty token
  };
  if (pad) tokenizer.pad_id = id_of(*pad);
  if (eos) tokenizer.eos_id = id_of(*eos);
  tokenizer.model_max_length = config.integer("model_max_length", INT64_MAX);
  tokenizer.padding_side = side(config, "padding_side");
  tokenizer.truncation_side = side(config, "truncation_side");
  tokenizer.impl_ = std::move(impl);
  return tokenizer;
}

}  // namespace diffuse
