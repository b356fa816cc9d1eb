#pragma once
// Qwen2's pre-tokenizer split: the matches of
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
// as tokenizers' Split (Oniguruma, "isolated") finds them, written out by hand: every alternative
// is tried in order at each position, with the backtracking that the regex engine would do
// (`\s+(?!\S)` leaves the last whitespace of a run for the word after it; `\s*[\r\n]+` ends at the
// run's last line break). \s is Unicode's White_Space, \p{L} and \p{N} the general categories, and
// (?i) folds case as Unicode does (so "'ſ" is a contraction too). Linear in the text's length.

#include <cstddef>
#include <string_view>
#include <utility>
#include <vector>

namespace diffuse::tokenizers {

// The pieces of `text` as [begin, end) offsets into it, in order. Every character belongs to one
// piece (each character is matched by some alternative), so the pieces tile the text.
std::vector<std::pair<size_t, size_t>> qwen2_split(std::u32string_view text);

}  // namespace diffuse::tokenizers
