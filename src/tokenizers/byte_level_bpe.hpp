#pragma once
// What the byte-level BPE tokenizers (CLIP's, Qwen2's) share: GPT-2's byte alphabet, vocab.json and
// merges.txt, the merge table and the merging of one word as tokenizers' BPE model does it, and the
// cache of merged words.

#include <array>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace diffuse::tokenizers {

// GPT-2's byte-level alphabet: each byte as a printable character in UTF-8 (bytes that are printable
// Latin-1 stand for themselves, the others are moved to U+0100 and up), so that BPE never sees
// whitespace or control characters.
const std::array<std::string, 256>& byte_level_alphabet();

// A vocabulary: token -> id.
using Vocab = std::unordered_map<std::string, int64_t>;

// Ids are read as tokenizers reads them, as 32-bit unsigned numbers.
constexpr int64_t kMaxTokenId = 0xFFFFFFFFLL;

// vocab.json: a JSON object of token -> id (ids in [0, kMaxTokenId]). `what` names it in the
// error when the file is absent ("CLIP vocabulary").
Vocab read_vocab_json(const std::filesystem::path& file, const char* what);

// One line of merges.txt (or one entry of tokenizer.json's model.merges): the two tokens that merge.
struct MergeRule {
  std::string left;
  std::string right;
  size_t line = 0;  // 1-based, for messages
};

// merges.txt: an optional "#version" line, then "left right" per line (empty lines skipped). A
// missing file or a line that is not two tokens is an error naming the file and the line.
std::vector<MergeRule> read_merges_txt(const std::filesystem::path& file);

// The merge table: (left id, right id) -> (rank, merged id).
class BpeMerges {
 public:
  // Resolves each rule's tokens in `vocab`, in order (a rule's rank is its index; a pair that comes
  // again takes the later rank, as tokenizers does). A token absent from the vocabulary is an error
  // that names `source` (and the rule's line when it has one) and `vocab_name`.
  static BpeMerges from_rules(const std::vector<MergeRule>& rules, const Vocab& vocab,
                              const std::string& source, const std::string& vocab_name);

  size_t size() const { return table_.size(); }

  // Merges a word given as its initial symbols: repeatedly the adjacent pair of lowest rank, leftmost
  // first among equals, until no adjacent pair has a merge. A heap over a linked list of symbols,
  // O(n log n) in the word's length, as tokenizers' Word::merge_all.
  std::vector<int64_t> merge(const std::vector<int64_t>& symbols) const;

 private:
  static uint64_t key(int64_t left, int64_t right) {
    return (static_cast<uint64_t>(left) << 32) | static_cast<uint64_t>(right);
  }
  std::unordered_map<uint64_t, std::pair<uint32_t, int64_t>> table_;
};

// Merged words, as tokenizers caches them: bounded (cleared when full), only for words shorter than
// `max_word_bytes`, safe to share between threads.
class BpeCache {
 public:
  explicit BpeCache(size_t capacity = 10000, size_t max_word_bytes = 256)
      : capacity_(capacity), max_word_bytes_(max_word_bytes) {}

  // Appends the cached ids of `word` to `out`; false when absent.
  bool append(const std::string& word, std::vector<int64_t>& out) const;
  void store(const std::string& word, const std::vector<int64_t>& ids) const;

 private:
  size_t capacity_;
  size_t max_word_bytes_;
  mutable std::mutex mutex_;
  mutable std::unordered_map<std::string, std::vector<int64_t>> words_;
};

}  // namespace diffuse::tokenizers
