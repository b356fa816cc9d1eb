#pragma once
// Names of tensor element types as users and files spell them.

#include <c10/core/ScalarType.h>

#include <string>
#include <string_view>

namespace diffuse {

// "float32"/"fp32"/"f32", "bfloat16"/"bf16", "float16"/"fp16"/"half", ... -> at::ScalarType.
// Throws diffuse::Error naming the text when it is none of them.
c10::ScalarType parse_dtype(std::string_view name);

// The short name used in logs and JSON: "float32", "bfloat16", "float16", "int64", ...
std::string dtype_name(c10::ScalarType dtype);

// Bytes per element.
size_t dtype_size(c10::ScalarType dtype);

}  // namespace diffuse
