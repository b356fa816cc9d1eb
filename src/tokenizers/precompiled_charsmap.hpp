#pragma once
// A SentencePiece model's normalizer, its `precompiled_charsmap` (for T5, NFKC plus a few rules of
// its own), applied the way tokenizers' `Precompiled` normalizer applies it, which is what
// transformers runs: text is read in grapheme clusters; a cluster shorter than 6 bytes is replaced
// whole by the rule of its *shortest* prefix that has one; otherwise each character is replaced by
// its own rule, if any. (SentencePiece itself takes the longest match at each character instead;
// the two differ only on some clusters of a base and combining marks.)
//
// The charsmap is a darts-clone double-array trie over UTF-8 bytes whose values index a pool of
// NUL-terminated replacement strings: [u32 trie byte size][trie units][pool].

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace diffuse::tokenizers {

class PrecompiledCharsmap {
 public:
  PrecompiledCharsmap() = default;  // the identity
  // `source` names the model in error messages.
  PrecompiledCharsmap(std::string_view blob, const std::string& source);

  bool empty() const { return trie_.empty(); }
  // `text` must be valid UTF-8.
  std::string normalize(std::string_view text) const;

 private:
  // The replacement of the shortest prefix of `chunk` that has a rule.
  std::optional<std::string_view> transform(std::string_view chunk) const;

  std::vector<uint32_t> trie_;
  std::string pool_;
};

// The end of the grapheme cluster that starts at text[begin] (valid UTF-8). An approximation of
// UAX #29 that is exact wherever the normalizer above can tell: clusters of a base followed by
// combining marks, ZWJ/ZWNJ, variation selectors and spacing marks, CR LF, and prepended
// concatenation marks. (Hangul, emoji and regional-indicator clusters are 6 bytes or more, and
// are normalized character by character either way.)
size_t grapheme_cluster_end(std::string_view text, size_t begin);

}  // namespace diffuse::tokenizers
