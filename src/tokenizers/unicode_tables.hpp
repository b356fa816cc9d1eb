#pragma once
// The Unicode data tables that scripts/generate_unicode_tables.py writes into unicode_tables.cpp.
// Each table is sorted by its first field, for binary search. Read them through unicode.hpp.

#include <cstddef>
#include <cstdint>

namespace diffuse::unicode::tables {

extern const char kUnicodeVersion[];

// General category from `first` up to the next run's first code point (values: unicode::Category).
struct CategoryRun {
  char32_t first;
  uint8_t category;
};
extern const CategoryRun kCategoryRuns[];
extern const size_t kCategoryRunCount;

// Lowercase: every `stride`-th code point of [first, last] lowers to itself + delta.
struct LowercaseRun {
  char32_t first;
  char32_t last;
  uint8_t stride;
  int32_t delta;
};
extern const LowercaseRun kLowercase[];
extern const size_t kLowercaseCount;

struct CombiningClassRange {
  char32_t first;
  char32_t last;
  uint8_t combining_class;
};
extern const CombiningClassRange kCombiningClasses[];  // non-zero classes only
extern const size_t kCombiningClassCount;

// Full canonical decomposition of `code_point`: kDecompositionPool[offset, offset + length).
struct Decomposition {
  char32_t code_point;
  uint16_t offset;
  uint8_t length;
};
extern const Decomposition kDecompositions[];
extern const size_t kDecompositionCount;
extern const char32_t kDecompositionPool[];

// Canonical composition (first, second) -> composite, sorted by (first, second).
struct Composition {
  char32_t first;
  char32_t second;
  char32_t composite;
};
extern const Composition kCompositions[];
extern const size_t kCompositionCount;

}  // namespace diffuse::unicode::tables
