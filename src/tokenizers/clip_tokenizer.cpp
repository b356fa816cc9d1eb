#include "diffuse/tokenizers/clip_tokenizer.hpp"

#include <array>

#include "diffuse/error.hpp"
#include "tokenizers/byte_level_bpe.hpp"
#include "tokenizers/tokenizer_common.hpp"
#include "tokenizers/unicode.hpp"

namespace diffuse {

namespace {

constexpr const char* kEndOfWord = "</w>";

}  // namespace

struct ClipTokenizer::Impl {
  tokenizers::Vocab vocab;
  tokenizers::BpeMerges merges;
  // The vocabulary id of each byte's character, inside a word and at its end ("</w>"); -1 if absent.
  std::array<int64_t, 256> byte_id{};
  std::array<int64_t, 256> final_byte_id{};
  int64_t unk_id = -1;
  tokenizers::SpecialTokens special;

  tokenizers::BpeCache cache;

  void tokenize_segment(std::string_view text, std::vector<int64_t>& out) const;
  void bpe(const std::string& word, std::vector<int64_t>& out) const;
  std::vector<int64_t> merge_word(const std::string& word) const;
};

// ---- loading -------------------------------------------------------------------------------------

ClipTokenizer ClipTokenizer::from_pretrained(const std::filesystem::path& folder) {
  auto impl = std::make_shared<Impl>();
  impl->vocab = tokenizers::read_vocab_json(folder / "vocab.json", "CLIP vocabulary");
  const std::filesystem::path merges_file = folder / "merges.txt";
  impl->merges = tokenizers::BpeMerges::from_rules(tokenizers::read_merges_txt(merges_file), impl->vocab,
                                                   merges_file.string(), "vocab.json");

  const auto& alphabet = tokenizers::byte_level_alphabet();
  for (int b = 0; b < 256; ++b) {
    auto inside = impl->vocab.find(alphabet[b]);
    auto final = impl->vocab.find(alphabet[b] + kEndOfWord);
    impl->byte_id[b] = inside == impl->vocab.end() ? -1 : inside->second;
    impl->final_byte_id[b] = final == impl->vocab.end() ? -1 : final->second;
  }

  // Special tokens: transformers' CLIPTokenizer defaults, overridden by tokenizer_config.json.
  const auto config = tokenizers::TokenizerConfig::load(folder);
  const std::string bos = config.token("bos_token").value_or("<|startoftext|>");
  const std::string eos = config.token("eos_token").value_or("<|endoftext|>");
  const std::string pad = config.token("pad_token").value_or("<|endoftext|>");
  const std::string unk = config.token("unk_token").value_or("<|endoftext|>");
  std::vector<std::string> specials = {bos, eos, pad, unk};
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"})
    for (auto& token : config.token_list(key)) specials.push_back(token);
  for (const auto& token : specials) {
    auto it = impl->vocab.find(token);
    if (it == impl->vocab.end())
      throw Error(config.file.string() + ": special token '" + token + "' is not in " +
                  (folder / "vocab.json").string());
    impl->special.add(token, it->second);
  }

  ClipTokenizer tokenizer;
  tokenizer.bos_id = impl->vocab.at(bos);
  tokenizer.eos_id = impl->vocab.at(eos);
  tokenizer.pad_id = impl->vocab.at(pad);
  impl->unk_id = impl->vocab.at(unk);
  tokenizer.model_max_length = config.integer("model_max_length", 77);
  tokenizer.impl_ = std::move(impl);
  return tokenizer;
}

// ---- encoding ------------------------------------------------------------------------------------

namespace {

bool is_separator(char32_t c) { return unicode::is_white_space(c); }
bool is_other(char32_t c) { return !is_separator(c) && !unicode::is_letter(c) && !unicode::is_number(c); }

// Splits lowercased, NFC text into CLIP's words, the matches of
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// (text between matches, whitespace, is dropped), then as the byte-level pre-tokenizer's GPT-2
// pattern splits them again: that only changes the two special-token words ("<|", name, "|>").
std::vector<std::string> split_words(const std::u32string& text) {
  std::vector<std::string> words;
  const size_t n = text.size();
  const auto emit = [&](size_t begin, size_t end) {
    words.push_back(unicode::encode_utf8(std::u32string_view(text).substr(begin, end - begin)));
  };
  const auto starts_with = [&](size_t i, std::u32string_view s) { return text.compare(i, s.size(), s) == 0; };
  for (size_t i = 0; i < n;) {
    const char32_t c = text[i];
    if (is_separator(c)) {
      ++i;
      continue;
    }
    bool special = false;
    for (std::u32string_view name : {U"startoftext", U"endoftext"}) {
      if (starts_with(i, U"<|") && starts_with(i + 2, name) && starts_with(i + 2 + name.size(), U"|>")) {
        emit(i, i + 2);
        emit(i + 2, i + 2 + name.size());
        emit(i + 2 + name.size(), i + 4 + name.size());
        i += 4 + name.size();
        special = true;
        break;
      }
    }
    if (special) continue;
    if (c == U'\'') {
      size_t length = 0;
      for (std::u32string_view suffix : {U"s", U"t", U"re", U"ve", U"m", U"ll", U"d"})
        if (starts_with(i + 1, suffix)) {
          length = 1 + suffix.size();
          break;
        }
      if (length > 0) {
        emit(i, i + length);
        i += length;
        continue;
      }
    }
    size_t end = i + 1;
    if (unicode::is_letter(c)) {
      while (end < n && unicode::is_letter(text[end])) ++end;
    } else if (!unicode::is_number(c)) {
      while (end < n && is_other(text[end])) ++end;
    }
    emit(i, end);
    i = end;
  }
  return words;
}

}  // namespace

// The word's bytes as vocabulary ids ("</w>" on the last), merged by BPE.
std::vector<int64_t> ClipTokenizer::Impl::merge_word(const std::string& word) const {
  std::vector<int64_t> symbols;
  symbols.reserve(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    const auto b = static_cast<unsigned char>(word[i]);
    int64_t id = i + 1 == word.size() ? final_byte_id[b] : byte_id[b];
    if (id < 0) id = unk_id;  // not in the vocabulary: each such character is one unknown token
    if (id >= 0) symbols.push_back(id);
  }
  return merges.merge(symbols);
}

void ClipTokenizer::Impl::bpe(const std::string& word, std::vector<int64_t>& out) const {
  if (cache.append(word, out)) return;
  const std::vector<int64_t> ids = merge_word(word);
  out.insert(out.end(), ids.begin(), ids.end());
  cache.store(word, ids);
}

void ClipTokenizer::Impl::tokenize_segment(std::string_view text, std::vector<int64_t>& out) const {
  // Normalizer: NFC, whitespace runs to " " (whitespace only separates words below, so it is
  // left as it is), lowercase.
  const std::u32string composed = unicode::nfc(unicode::decode_utf8(text));
  std::u32string lowered;
  lowered.reserve(composed.size());
  for (char32_t c : composed) unicode::append_lowercase(lowered, c);
  for (const std::string& word : split_words(lowered)) bpe(word, out);
}

std::vector<int64_t> ClipTokenizer::encode(std::string_view text) const {
  const std::string valid = unicode::sanitize_utf8(text);
  std::vector<int64_t> ids{bos_id};
  for (const auto& piece : impl_->special.split(valid)) {
    if (piece.id >= 0)
      ids.push_back(piece.id);
    else
      impl_->tokenize_segment(piece.text, ids);
  }
  ids.push_back(eos_id);
  return ids;
}

std::vector<int64_t> ClipTokenizer::operator()(std::string_view text, int64_t max_length) const {
  if (max_length < 2)
    throw Error("ClipTokenizer: max_length " + std::to_string(max_length) +
                " leaves no room for the start and end tokens (at least 2)");
  return tokenizers::truncate_and_pad(encode(text), max_length, /*trailing=*/1, pad_id);
}

at::Tensor ClipTokenizer::encode_batch(const std::vector<std::string>& texts, int64_t max_length) const {
  return tokenizers::encode_rows(texts, max_length, [&](std::string_view text) { return (*this)(text, max_length); });
}

int64_t ClipTokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->vocab.find(std::string(token));
  return it == impl_->vocab.end() ? -1 : it->second;
}

int64_t ClipTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->vocab.size()); }

}  // namespace diffuse
