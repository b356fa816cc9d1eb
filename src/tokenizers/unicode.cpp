#include "tokenizers/unicode.hpp"

#include <algorithm>
#include <vector>

#include "tokenizers/unicode_tables.hpp"

namespace diffuse::unicode {

namespace t = tables;

const char* version() { return t::kUnicodeVersion; }

Category category(char32_t c) {
  const auto* end = t::kCategoryRuns + t::kCategoryRunCount;
  const auto* it = std::upper_bound(t::kCategoryRuns, end, c,
                                    [](char32_t v, const t::CategoryRun& run) { return v < run.first; });
  if (it == t::kCategoryRuns) return Category::Cn;
  return static_cast<Category>((it - 1)->category);
}

bool is_white_space(char32_t c) {
  // PropList.txt's White_Space, unchanged since Unicode 6.3.
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// ---- UTF-8 ---------------------------------------------------------------------------------------

namespace {

constexpr char32_t kReplacement = 0xFFFD;

// Decodes one well-formed sequence at text[i]; returns its length, or 0 when ill-formed.
size_t decode_one(std::string_view text, size_t i, char32_t& out) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[i + k]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80) {
    out = lead;
    return 1;
  }
  size_t length;
  char32_t c;
  char32_t minimum;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2, c = lead & 0x1F, minimum = 0x80;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3, c = lead & 0x0F, minimum = 0x800;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4, c = lead & 0x07, minimum = 0x10000;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(k) & 0xC0) != 0x80) return 0;
    c = (c << 6) | (byte(k) & 0x3F);
  }
  if (c < minimum || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  out = c;
  return length;
}

}  // namespace

size_t decode_utf8_at(std::string_view text, size_t i, char32_t& c) {
  const size_t length = decode_one(text, i, c);
  if (length != 0) return length;
  c = kReplacement;
  return 1;
}

std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    char32_t c;
    i += decode_utf8_at(text, i, c);
    out.push_back(c);
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) append_utf8(out, c);
  return out;
}

std::string sanitize_utf8(std::string_view text) {
  bool well_formed = true;
  for (size_t i = 0; i < text.size() && well_formed;) {
    char32_t c;
    size_t length = decode_one(text, i, c);
    well_formed = length != 0;
    i += length;
  }
  if (well_formed) return std::string(text);
  return encode_utf8(decode_utf8(text));
}

// ---- lowercase -----------------------------------------------------------------------------------

void append_lowercase(std::u32string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  if (c == 0x130) {  // İ lowers to i + combining dot above (SpecialCasing.txt)
    out.push_back(U'i');
    out.push_back(0x307);
    return;
  }
  const auto* end = t::kLowercase + t::kLowercaseCount;
  const auto* it = std::upper_bound(t::kLowercase, end, c,
                                    [](char32_t v, const t::LowercaseRun& run) { return v < run.first; });
  if (it != t::kLowercase) {
    const auto& run = *(it - 1);
    if (c <= run.last && (c - run.first) % run.stride == 0) {
      out.push_back(static_cast<char32_t>(static_cast<int64_t>(c) + run.delta));
      return;
    }
  }
  out.push_back(c);
}

// ---- NFC (UAX #15) -------------------------------------------------------------------------------

namespace {

// Hangul syllables decompose and compose by arithmetic.
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount;
constexpr char32_t kSCount = kLCount * kNCount;

uint8_t combining_class(char32_t c) {
  if (c < 0x300) return 0;
  const auto* end = t::kCombiningClasses + t::kCombiningClassCount;
  const auto* it = std::upper_bound(t::kCombiningClasses, end, c,
                                    [](char32_t v, const t::CombiningClassRange& r) { return v < r.first; });
  if (it == t::kCombiningClasses) return 0;
  --it;
  return c <= it->last ? it->combining_class : 0;
}

void append_decomposition(std::u32string& out, char32_t c) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t s = c - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto* end = t::kDecompositions + t::kDecompositionCount;
  const auto* it = std::lower_bound(t::kDecompositions, end, c,
                                    [](const t::Decomposition& d, char32_t v) { return d.code_point < v; });
  if (it != end && it->code_point == c) {
    out.append(t::kDecompositionPool + it->offset, it->length);
  } else {
    out.push_back(c);
  }
}

// The primary composite of (a, b), or 0.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto* end = t::kCompositions + t::kCompositionCount;
  const auto* it = std::lower_bound(t::kCompositions, end, std::make_pair(a, b),
                                    [](const t::Composition& c, const std::pair<char32_t, char32_t>& v) {
                                      return c.first < v.first || (c.first == v.first && c.second < v.second);
                                    });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

}  // namespace

std::u32string nfc(std::u32string_view text) {
  // Below U+0300 every character is its own NFC and none is the second of a composition.
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x300; })) return std::u32string(text);

  // Full canonical decomposition, then the canonical order of each run of non-starters.
  std::u32string decomposed;
  decomposed.reserve(text.size());
  for (char32_t c : text) append_decomposition(decomposed, c);
  std::vector<uint8_t> classes(decomposed.size());
  for (size_t i = 0; i < decomposed.size(); ++i) classes[i] = combining_class(decomposed[i]);
  for (size_t i = 0; i < decomposed.size();) {
    if (classes[i] == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < decomposed.size() && classes[j] != 0) ++j;
    // Stable sort by combining class over [i, j): O(n log n), since a run can be as long as the text.
    if (j - i > 1) {
      std::vector<std::pair<uint8_t, char32_t>> run;
      for (size_t k = i; k < j; ++k) run.emplace_back(classes[k], decomposed[k]);
      std::stable_sort(run.begin(), run.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      for (size_t k = i; k < j; ++k) classes[k] = run[k - i].first, decomposed[k] = run[k - i].second;
    }
    i = j;
  }

  // Canonical composition: each character joins the last starter unless a character between them
  // blocks it (class 0, or a class not lower than its own).
  std::u32string out;
  out.reserve(decomposed.size());
  std::ptrdiff_t starter = -1;
  uint8_t last_class = 0;
  for (size_t i = 0; i < decomposed.size(); ++i) {
    const char32_t c = decomposed[i];
    const uint8_t cc = classes[i];
    if (starter >= 0) {
      const bool adjacent = static_cast<size_t>(starter) + 1 == out.size();
      if (adjacent || (last_class != 0 && last_class < cc)) {
        if (char32_t composite = compose(out[starter], c)) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (cc == 0) starter = static_cast<std::ptrdiff_t>(out.size());
    out.push_back(c);
    last_class = cc;
  }
  return out;
}

}  // namespace diffuse::unicode
