#include "tokenizers/precompiled_charsmap.hpp"

#include <cstring>

#include "diffuse/error.hpp"
#include "tokenizers/unicode.hpp"

namespace diffuse::tokenizers {

// ---- the double-array trie -----------------------------------------------------------------------

PrecompiledCharsmap::PrecompiledCharsmap(std::string_view blob, const std::string& source) {
  if (blob.empty()) return;
  const auto bad = [&](const char* what) {
    return Error(source + ": malformed precompiled_charsmap (" + std::string(what) + ")");
  };
  if (blob.size() < 4) throw bad("shorter than its header");
  const auto read_u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int k = 3; k >= 0; --k) v = (v << 8) | static_cast<unsigned char>(blob[at + k]);
    return v;
  };
  const uint32_t trie_bytes = read_u32(0);
  if (trie_bytes % 4 != 0 || trie_bytes == 0 || trie_bytes > blob.size() - 4) throw bad("trie size");
  trie_.resize(trie_bytes / 4);
  for (size_t i = 0; i < trie_.size(); ++i) trie_[i] = read_u32(4 + 4 * i);
  pool_ = std::string(blob.substr(4 + trie_bytes));
}

std::optional<std::string_view> PrecompiledCharsmap::transform(std::string_view chunk) const {
  // darts-clone units: bit 8 has_leaf, label in the low byte (bit 31 for non-label units), and an
  // offset to the children (scaled by 256 when bit 9 is set).
  const auto offset = [](uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); };
  const auto has_leaf = [](uint32_t unit) { return ((unit >> 8) & 1) == 1; };
  const auto label = [](uint32_t unit) { return unit & ((1u << 31) | 0xFF); };
  const auto value = [](uint32_t unit) { return unit & ((1u << 31) - 1); };

  size_t node = offset(trie_[0]);
  for (char ch : chunk) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == 0) return std::nullopt;
    node ^= c;
    if (node >= trie_.size()) return std::nullopt;
    const uint32_t unit = trie_[node];
    if (label(unit) != c) return std::nullopt;
    node ^= offset(unit);
    if (node >= trie_.size()) return std::nullopt;
    if (has_leaf(unit)) {
      const uint32_t index = value(trie_[node]);
      if (index >= pool_.size()) return std::nullopt;
      const char* begin = pool_.data() + index;
      return std::string_view(begin, strnlen(begin, pool_.size() - index));
    }
  }
  return std::nullopt;
}

std::string PrecompiledCharsmap::normalize(std::string_view text) const {
  if (empty()) return std::string(text);
  std::string out;
  out.reserve(text.size());
  for (size_t begin = 0; begin < text.size();) {
    const size_t end = grapheme_cluster_end(text, begin);
    const std::string_view cluster = text.substr(begin, end - begin);
    std::optional<std::string_view> whole;
    if (cluster.size() < 6) whole = transform(cluster);
    if (whole) {
      out += *whole;
    } else {
      for (size_t i = begin; i < end;) {
        const size_t length = unicode::utf8_length(static_cast<unsigned char>(text[i]));
        const std::string_view character = text.substr(i, length);
        out += transform(character).value_or(character);
        i += length;
      }
    }
    begin = end;
  }
  return out;
}

// ---- grapheme clusters ---------------------------------------------------------------------------

namespace {

// Prepended_Concatenation_Mark and other Prepend characters below U+10000.
bool is_prepend(char32_t c) {
  return (c >= 0x600 && c <= 0x605) || c == 0x6DD || c == 0x70F || c == 0x890 || c == 0x891 || c == 0x8E2 ||
         c == 0xD4E || c == 0x110BD || c == 0x110CD;
}

// Grapheme_Cluster_Break = Control (CR and LF included).
bool is_control(char32_t c) {
  using unicode::Category;
  if (c == 0x200C || c == 0x200D || is_prepend(c)) return false;
  const Category k = unicode::category(c);
  return k == Category::Cc || k == Category::Zl || k == Category::Zp || k == Category::Cf;
}

// Grapheme_Cluster_Break = Extend, ZWJ or SpacingMark: nothing breaks before these.
bool is_extending(char32_t c) {
  // Spacing marks that UAX #29 leaves out of SpacingMark (Myanmar and Tai Tham vowel signs...).
  switch (c) {
    case 0x102B: case 0x102C: case 0x1038: case 0x1062: case 0x1063: case 0x1064: case 0x1067:
    case 0x1068: case 0x1069: case 0x106A: case 0x106B: case 0x106C: case 0x106D: case 0x1083:
    case 0x1087: case 0x1088: case 0x1089: case 0x108A: case 0x108B: case 0x108C: case 0x108F:
    case 0x109A: case 0x109B: case 0x109C: case 0x1A61: case 0x1A63: case 0x1A64: case 0xAA7B:
    case 0xAA7D: case 0x11720: case 0x11721:
      return false;
    case 0x200C: case 0x200D: case 0xFF9E: case 0xFF9F: case 0x0E33: case 0x0EB3:
      return true;
    default:
      break;
  }
  if (c >= 0x1F3FB && c <= 0x1F3FF) return true;  // emoji modifiers
  if (c >= 0xE0020 && c <= 0xE007F) return true;  // tags
  return unicode::is_mark(c);
}

}  // namespace

size_t grapheme_cluster_end(std::string_view text, size_t begin) {
  char32_t previous;
  size_t end = begin + unicode::decode_utf8_at(text, begin, previous);
  while (end < text.size()) {
    char32_t c;
    const size_t length = unicode::decode_utf8_at(text, end, c);
    bool joins;
    if (previous == U'\r' && c == U'\n')
      joins = true;
    else if (is_control(previous) || is_control(c))
      joins = false;
    else
      joins = is_extending(c) || is_prepend(previous);
    if (!joins) break;
    previous = c;
    end += length;
  }
  return end;
}

}  // namespace diffuse::tokenizers
