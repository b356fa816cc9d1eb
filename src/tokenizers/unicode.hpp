#pragma once
// The little Unicode that the tokenizers need, without ICU: UTF-8, general categories, White_Space,
// lowercase and NFC. The data comes from unicode_tables.cpp (scripts/generate_unicode_tables.py).

#include <cstdint>
#include <string>
#include <string_view>

namespace diffuse::unicode {

// General categories, in the generator's order.
enum class Category : uint8_t {
  Cn, Lu, Ll, Lt, Lm, Lo, Mn, Mc, Me, Nd, Nl, No, Pc, Pd, Ps,
  Pe, Pi, Pf, Po, Sm, Sc, Sk, So, Zs, Zl, Zp, Cc, Cf, Cs, Co
};

// The Unicode version of the tables.
const char* version();

Category category(char32_t c);
inline bool is_letter(char32_t c) {  // \p{L}
  auto k = category(c);
  return k >= Category::Lu && k <= Category::Lo;
}
inline bool is_number(char32_t c) {  // \p{N}
  auto k = category(c);
  return k >= Category::Nd && k <= Category::No;
}
inline bool is_mark(char32_t c) {  // \p{M}
  auto k = category(c);
  return k >= Category::Mn && k <= Category::Me;
}
// The White_Space property: what Rust's char::is_whitespace and Oniguruma's \s match.
bool is_white_space(char32_t c);

// Decodes the UTF-8 sequence at text[i] into `c` and returns its length; an ill-formed byte gives
// U+FFFD and length 1.
size_t decode_utf8_at(std::string_view text, size_t i, char32_t& c);
// Decodes UTF-8; each byte of an ill-formed sequence becomes U+FFFD, as a Python string would
// never hold one.
std::u32string decode_utf8(std::string_view text);
void append_utf8(std::string& out, char32_t c);
std::string encode_utf8(std::u32string_view text);
// The length of the UTF-8 sequence that starts with `lead` (1 for a stray continuation byte).
inline size_t utf8_length(unsigned char lead) {
  return lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
// `text` with every ill-formed UTF-8 sequence replaced by U+FFFD.
std::string sanitize_utf8(std::string_view text);

// Appends the full lowercase mapping of `c`, as Rust's char::to_lowercase (no context: capital
// sigma always becomes σ).
void append_lowercase(std::u32string& out, char32_t c);

// Canonical composition (NFC).
std::u32string nfc(std::u32string_view text);

}  // namespace diffuse::unicode
