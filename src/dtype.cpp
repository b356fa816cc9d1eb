#include "diffuse/dtype.hpp"

#include <algorithm>
#include <cctype>

#include "diffuse/error.hpp"

namespace diffuse {

c10::ScalarType parse_dtype(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower == "float32" || lower == "fp32" || lower == "f32" || lower == "float") return c10::kFloat;
  if (lower == "bfloat16" || lower == "bf16") return c10::kBFloat16;
  if (lower == "float16" || lower == "fp16" || lower == "f16" || lower == "half") return c10::kHalf;
  if (lower == "float64" || lower == "fp64" || lower == "f64" || lower == "double") return c10::kDouble;
  throw Error("unknown dtype '" + std::string(name) + "' (expected float32, bfloat16, float16 or float64)");
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat: return "float32";
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    case c10::kDouble: return "float64";
    case c10::kLong: return "int64";
    case c10::kInt: return "int32";
    case c10::kShort: return "int16";
    case c10::kChar: return "int8";
    case c10::kByte: return "uint8";
    case c10::kBool: return "bool";
    default: return c10::toString(dtype);
  }
}

size_t dtype_size(c10::ScalarType dtype) { return c10::elementSize(dtype); }

}  // namespace diffuse
