#include "tokenizers/byte_level_bpe.hpp"

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <queue>

#include "diffuse/error.hpp"
#include "io/json_text.hpp"
#include "tokenizers/tokenizer_common.hpp"
#include "tokenizers/unicode.hpp"

namespace diffuse::tokenizers {

const std::array<std::string, 256>& byte_level_alphabet() {
  static const std::array<std::string, 256> alphabet = [] {
    std::array<std::string, 256> out;
    int shifted = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t c = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + shifted++);
      unicode::append_utf8(out[b], c);
    }
    return out;
  }();
  return alphabet;
}

Vocab read_vocab_json(const std::filesystem::path& file, const char* what) {
  if (!std::filesystem::exists(file)) throw Error(file.string() + ": " + what + " not found");
  nlohmann::json json = read_json_file(file);
  if (!json.is_object()) throw Error(file.string() + ": expected a JSON object of token -> id");
  Vocab vocab;
  vocab.reserve(json.size());
  for (const auto& [token, id] : json.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)
      throw Error(file.string() + ": the id of token " + nlohmann::json(token).dump() +
                  " should be an integer in [0, 2^32), got " + json_for_message(id));
    vocab.emplace(token, id.get<int64_t>());
  }
  if (vocab.empty()) throw Error(file.string() + ": the vocabulary is empty");
  return vocab;
}

std::vector<MergeRule> read_merges_txt(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": BPE merges not found");
  std::vector<MergeRule> rules;
  std::string line;
  for (size_t line_number = 1; std::getline(in, line); ++line_number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("#version", 0) == 0 || line.empty()) continue;
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos)
      throw Error(file.string() + ":" + std::to_string(line_number) +
                  ": expected two tokens separated by a space, got '" + line + "'");
    rules.push_back({line.substr(0, space), line.substr(space + 1), line_number});
  }
  return rules;
}

BpeMerges BpeMerges::from_rules(const std::vector<MergeRule>& rules, const Vocab& vocab, const std::string& source,
                                const std::string& vocab_name) {
  BpeMerges merges;
  merges.table_.reserve(rules.size());
  uint32_t rank = 0;
  for (const MergeRule& rule : rules) {
    const auto id_of = [&](const std::string& token) {
      auto it = vocab.find(token);
      if (it == vocab.end())
        throw Error(source + (rule.line > 0 ? ":" + std::to_string(rule.line) : std::string()) + ": merge token '" +
                    token + "' is not in " + vocab_name);
      return it->second;
    };
    const uint64_t pair = key(id_of(rule.left), id_of(rule.right));
    merges.table_[pair] = {rank++, id_of(rule.left + rule.right)};
  }
  return merges;
}

namespace {

// A symbol of the word being merged: a linked list over the initial symbols.
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

std::vector<int64_t> BpeMerges::merge(const std::vector<int64_t>& initial) const {
  if (initial.size() < 2 || table_.empty()) return initial;
  std::vector<Symbol> symbols;
  symbols.reserve(initial.size());
  for (size_t i = 0; i < initial.size(); ++i)
    symbols.push_back({initial[i], static_cast<std::ptrdiff_t>(i) - 1, static_cast<std::ptrdiff_t>(i) + 1});
  symbols.back().next = -1;

  std::priority_queue<MergeCandidate, std::vector<MergeCandidate>, std::greater<>> queue;
  const auto push_pair = [&](size_t pos) {
    const std::ptrdiff_t next = symbols[pos].next;
    if (next < 0) return;
    auto it = table_.find(key(symbols[pos].id, symbols[next].id));
    if (it != table_.end()) queue.push({it->second.first, pos, it->second.second});
  };
  for (size_t pos = 0; pos + 1 < symbols.size(); ++pos) push_pair(pos);

  while (!queue.empty()) {
    const MergeCandidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Skip candidates made stale by an earlier merge.
    auto it = table_.find(key(left.id, right.id));
    if (it == table_.end() || it->second.second != top.new_id) continue;
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

bool BpeCache::append(const std::string& word, std::vector<int64_t>& out) const {
  if (word.size() >= max_word_bytes_) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = words_.find(word);
  if (it == words_.end()) return false;
  out.insert(out.end(), it->second.begin(), it->second.end());
  return true;
}

void BpeCache::store(const std::string& word, const std::vector<int64_t>& ids) const {
  if (word.size() >= max_word_bytes_) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (words_.size() >= capacity_) words_.clear();
  words_.emplace(word, ids);
}

}  // namespace diffuse::tokenizers
