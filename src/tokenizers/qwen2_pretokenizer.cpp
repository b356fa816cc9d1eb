#include "tokenizers/qwen2_pretokenizer.hpp"

#include "tokenizers/unicode.hpp"

namespace diffuse::tokenizers {

namespace {

bool is_space(char32_t c) { return unicode::is_white_space(c); }                 // \s
bool is_letter(char32_t c) { return unicode::is_letter(c); }                     // \p{L}
bool is_number(char32_t c) { return unicode::is_number(c); }                     // \p{N}
bool is_line_break(char32_t c) { return c == U'\r' || c == U'\n'; }              // [\r\n]
bool is_other(char32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); }  // [^\s\p{L}\p{N}]

// Simple case folding onto the letters of the contractions: ASCII capitals, and U+017F LATIN SMALL
// LETTER LONG S, which folds to "s". No other character folds to one of s t r e v m l d.
char32_t fold(char32_t c) {
  if (c >= U'A' && c <= U'Z') return c - U'A' + U'a';
  if (c == 0x017F) return U's';
  return c;
}

// The end of the match that starts at text[i] (always > i).
size_t match_at(std::u32string_view text, size_t i) {
  const size_t n = text.size();
  const char32_t c = text[i];

  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (c == U'\'' && i + 1 < n) {
    const char32_t a = fold(text[i + 1]);
    if (a == U's' || a == U't' || a == U'm' || a == U'd') return i + 2;
    if (i + 2 < n) {
      const char32_t b = fold(text[i + 2]);
      if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return i + 3;
    }
  }

  // [^\r\n\p{L}\p{N}]?\p{L}+ : the optional character is taken only when a letter follows it.
  size_t letters = n;
  if (is_letter(c))
    letters = i;
  else if (!is_line_break(c) && !is_number(c) && i + 1 < n && is_letter(text[i + 1]))
    letters = i + 1;
  if (letters < n) {
    size_t end = letters;
    while (end < n && is_letter(text[end])) ++end;
    return end;
  }

  // \p{N}
  if (is_number(c)) return i + 1;

  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  const size_t others = (c == U' ' && i + 1 < n && is_other(text[i + 1])) ? i + 1 : i;
  if (is_other(text[others])) {
    size_t end = others;
    while (end < n && is_other(text[end])) ++end;
    while (end < n && is_line_break(text[end])) ++end;
    return end;
  }

  // Only whitespace is left: c is \s. The run of it is [i, run_end).
  size_t run_end = i;
  while (run_end < n && is_space(text[run_end])) ++run_end;
  // \s*[\r\n]+ : the greedy \s* gives back characters until [\r\n]+ can start, i.e. the match ends
  // after the run's last line break.
  for (size_t k = run_end; k > i; --k)
    if (is_line_break(text[k - 1])) return k;
  // \s+(?!\S) : the whole run at the end of the text; else all but its last character, which then
  // begins the next piece (" word"); a single space before a non-space fails here.
  if (run_end == n) return run_end;
  if (run_end - i >= 2) return run_end - 1;
  // \s+
  return run_end;
}

}  // namespace

std::vector<std::pair<size_t, size_t>> qwen2_split(std::u32string_view text) {
  std::vector<std::pair<size_t, size_t>> pieces;
  for (size_t i = 0; i < text.size();) {
    const size_t end = match_at(text, i);
    pieces.emplace_back(i, end);
    i = end;
  }
  return pieces;
}

}  // namespace diffuse::tokenizers
