#pragma once
// Memory budgets as users write them, Accelerate's way: max_memory = {"cuda:0": "16GB", "cpu": "64GiB",
// "disk": "200GB"}. Decimal units are powers of 1000 ("16GB" = 16e9 bytes), binary ones powers of 1024
// ("16GiB" = 16 * 2^30); a bare number is bytes.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace diffuse {

// Device -> budget, as given: keys "cuda:N" (also "cuda" for cuda:0 and "N" for cuda:N, as Accelerate's
// integer keys), "cpu" and "disk"; values "16GB", "16GiB", "500MB", "1.5GB", "123456".
using MaxMemory = std::map<std::string, std::string>;

// Budgets in bytes, in the order placement fills devices: GPUs by index, then "cpu", then "disk".
using MemoryBudget = std::vector<std::pair<std::string, uint64_t>>;

// "16GB" -> 16000000000, "16GiB" -> 17179869184, "500MB", "2KiB", "1.5GB", "123" (bytes). Case does not
// matter ("16gb"). Throws diffuse::Error quoting the text for anything else (negative, no digits,
// unknown unit).
uint64_t parse_memory_size(std::string_view text);

// The canonical name of a placement device: "cuda:N", "cpu" or "disk". "cuda" is "cuda:0"; a bare
// index "1" is "cuda:1". Throws diffuse::Error for anything else.
std::string canonical_device(std::string_view name);
bool is_gpu_device(std::string_view canonical);  // "cuda:N"

// Parses and orders a max_memory map. Throws diffuse::Error naming the key or value at fault, and for
// a device given twice under two spellings ("cuda" and "cuda:0").
MemoryBudget parse_max_memory(const MaxMemory& max_memory);

}  // namespace diffuse
