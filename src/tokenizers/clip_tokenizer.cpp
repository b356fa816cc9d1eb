#include "diffuse/tokenizers/clip_tokenizer.hpp"

#include <array>
#include <fstream>
#include <mutex>
#include <queue>
#include <unordered_map>

#include "diffuse/error.hpp"
#include "tokenizers/tokenizer_common.hpp"
#include "tokenizers/unicode.hpp"
#include "io/json_text.hpp"

namespace diffuse {

namespace {

constexpr const char* kEndOfWord = "</w>";

// GPT-2's byte-level alphabet: each byte as a printable character (bytes that are printable
// Latin-1 stand for themselves, the others are moved to U+0100 and up), so that BPE never sees
// whitespace or control characters.
std::array<std::string, 256> byte_level_alphabet() {
  std::array<std::string, 256> out;
  int shifted = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const char32_t c = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + shifted++);
    unicode::append_utf8(out[b], c);
  }
  return out;
}

uint64_t pair_key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b); }

}  // namespace

struct ClipTokenizer::Impl {
  std::unordered_map<std::string, int64_t> vocab;
  // (left id, right id) -> (rank, id of the merged token)
  std::unordered_map<uint64_t, std::pair<uint32_t, int64_t>> merges;
  // The vocabulary id of each byte's character, inside a word and at its end ("</w>"); -1 if absent.
  std::array<int64_t, 256> byte_id{};
  std::array<int64_t, 256> final_byte_id{};
  int64_t unk_id = -1;
  tokenizers::SpecialTokens special;

  // BPE results per word, as tokenizers caches them (bounded; cleared when full).
  static constexpr size_t kCacheCapacity = 10000;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache;

  void tokenize_segment(std::string_view text, std::vector<int64_t>& out) const;
  void bpe(const std::string& word, std::vector<int64_t>& out) const;
  std::vector<int64_t> merge_word(const std::string& word) const;
};

// ---- loading -------------------------------------------------------------------------------------

namespace {

std::unordered_map<std::string, int64_t> read_vocab(const std::filesystem::path& file) {
  if (!std::filesystem::exists(file)) throw Error(file.string() + ": CLIP vocabulary not found");
  nlohmann::json json = tokenizers::read_json_file(file);
  if (!json.is_object()) throw Error(file.string() + ": expected a JSON object of token -> id");
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(json.size());
  for (const auto& [token, id] : json.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      throw Error(file.string() + ": the id of token " + nlohmann::json(token).dump() +
                  " should be a non-negative integer, got " + json_for_message(id));
    vocab.emplace(token, id.get<int64_t>());
  }
  if (vocab.empty()) throw Error(file.string() + ": the vocabulary is empty");
  return vocab;
}

void read_merges(const std::filesystem::path& file, const std::unordered_map<std::string, int64_t>& vocab,
                 std::unordered_map<uint64_t, std::pair<uint32_t, int64_t>>& merges) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": BPE merges not found");
  const auto id_of = [&](const std::string& token, size_t line_number) {
    auto it = vocab.find(token);
    if (it == vocab.end())
      throw Error(file.string() + ":" + std::to_string(line_number) + ": merge token '" + token +
                  "' is not in vocab.json");
    return it->second;
  };
  std::string line;
  uint32_t rank = 0;
  for (size_t line_number = 1; std::getline(in, line); ++line_number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("#version", 0) == 0 || line.empty()) continue;
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos)
      throw Error(file.string() + ":" + std::to_string(line_number) +
                  ": expected two tokens separated by a space, got '" + line + "'");
    const std::string left = line.substr(0, space), right = line.substr(space + 1);
    const uint64_t key = pair_key(id_of(left, line_number), id_of(right, line_number));
    merges[key] = {rank++, id_of(left + right, line_number)};  // a repeated pair: the later rank wins
  }
}

}  // namespace

ClipTokenizer ClipTokenizer::from_pretrained(const std::filesystem::path& folder) {
  auto impl = std::make_shared<Impl>();
  impl->vocab = read_vocab(folder / "vocab.json");
  read_merges(folder / "merges.txt", impl->vocab, impl->merges);

  const auto alphabet = byte_level_alphabet();
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

// A symbol of the word being merged: a linked list over the initial characters.
struct Symbol {
  int64_t id;
  std::ptrdiff_t prev;
  std::ptrdiff_t next;
  bool removed = false;
};

struct MergeCandidate {
  uint32_t rank;
  size_t pos;
  int64_t new_id;
  bool operator>(const MergeCandidate& other) const {
    return rank != other.rank ? rank > other.rank : pos > other.pos;
  }
};

}  // namespace

// Byte-level BPE as tokenizers merges a word: repeatedly the pair of lowest merge rank, leftmost
// first, until no adjacent pair has a merge.
std::vector<int64_t> ClipTokenizer::Impl::merge_word(const std::string& word) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    const auto b = static_cast<unsigned char>(word[i]);
    int64_t id = i + 1 == word.size() ? final_byte_id[b] : byte_id[b];
    if (id < 0) id = unk_id;  // not in the vocabulary: each such character is one unknown token
    if (id < 0) continue;
    symbols.push_back({id, static_cast<std::ptrdiff_t>(symbols.size()) - 1,
                       static_cast<std::ptrdiff_t>(symbols.size()) + 1});
  }
  if (!symbols.empty()) symbols.back().next = -1;

  std::priority_queue<MergeCandidate, std::vector<MergeCandidate>, std::greater<>> queue;
  const auto push_pair = [&](size_t pos) {
    const std::ptrdiff_t next = symbols[pos].next;
    if (next < 0) return;
    auto it = merges.find(pair_key(symbols[pos].id, symbols[next].id));
    if (it != merges.end()) queue.push({it->second.first, pos, it->second.second});
  };
  for (size_t pos = 0; pos + 1 < symbols.size(); ++pos) push_pair(pos);

  while (!queue.empty()) {
    const MergeCandidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Skip candidates made stale by an earlier merge.
    auto it = merges.find(pair_key(left.id, right.id));
    if (it == merges.end() || it->second.second != top.new_id) continue;
    left.id = top.new_id;
    right.removed = true;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = static_cast<std::ptrdiff_t>(top.pos);
    if (left.prev >= 0) push_pair(static_cast<size_t>(left.prev));
    push_pair(top.pos);
  }

  std::vector<int64_t> ids;
  for (const Symbol& s : symbols)
    if (!s.removed) ids.push_back(s.id);
  return ids;
}

void ClipTokenizer::Impl::bpe(const std::string& word, std::vector<int64_t>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(word);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int64_t> ids = merge_word(word);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mutex);
  if (cache.size() >= kCacheCapacity) cache.clear();
  cache.emplace(word, std::move(ids));
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
