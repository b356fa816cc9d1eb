#include "diffuse/placement/memory_size.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "diffuse/error.hpp"

namespace diffuse {
namespace {

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string trim(std::string_view text) {
  size_t begin = 0, end = text.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(text[begin]))) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(text[end - 1]))) --end;
  return std::string(text.substr(begin, end - begin));
}

bool all_digits(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The order devices are filled in: GPUs by index, then the CPU, then the disk.
int64_t device_rank(const std::string& canonical) {
  if (canonical == "cpu") return int64_t{1} << 40;
  if (canonical == "disk") return (int64_t{1} << 40) + 1;
  return std::stoll(canonical.substr(5));
}

}  // namespace

uint64_t parse_memory_size(std::string_view text) {
  const std::string spelled = trim(text);
  const std::string value = lower(spelled);
  auto fail = [&]() -> uint64_t {
    throw Error("memory size '" + std::string(text) +
                "' is not valid: use bytes (\"1024\") or a number with a unit (\"16GB\", \"16GiB\", \"500MB\")");
  };
  struct Unit {
    const char* suffix;
    double scale;
  };
  // Longest suffixes first, so that "gib" is not read as "b".
  static const Unit units[] = {{"tib", 1099511627776.0}, {"gib", 1073741824.0}, {"mib", 1048576.0},
                               {"kib", 1024.0},          {"tb", 1e12},          {"gb", 1e9},
                               {"mb", 1e6},              {"kb", 1e3},           {"b", 1.0}};
  double scale = 1.0;
  std::string number = value;
  for (const Unit& unit : units) {
    const std::string suffix = unit.suffix;
    if (value.size() > suffix.size() && value.compare(value.size() - suffix.size(), suffix.size(), suffix) == 0) {
      scale = unit.scale;
      number = trim(value.substr(0, value.size() - suffix.size()));
      break;
    }
  }
  if (number.empty() || number.find_first_not_of("0123456789.") != std::string::npos ||
      std::count(number.begin(), number.end(), '.') > 1 || number == ".")
    return fail();
  const double bytes = std::strtod(number.c_str(), nullptr) * scale;
  if (!std::isfinite(bytes) || bytes >= 1.8e19) return fail();
  return static_cast<uint64_t>(std::llround(bytes));
}

std::string canonical_device(std::string_view name) {
  const std::string value = lower(trim(name));
  if (value == "cpu" || value == "disk") return value;
  if (value == "cuda") return "cuda:0";
  if (all_digits(value)) return "cuda:" + std::to_string(std::stoll(value));
  if (value.rfind("cuda:", 0) == 0 && all_digits(value.substr(5)))
    return "cuda:" + std::to_string(std::stoll(value.substr(5)));
  throw Error("device '" + std::string(name) + "' is not a placement device (expected \"cuda:N\", \"cpu\" or \"disk\")");
}

bool is_gpu_device(std::string_view canonical) { return canonical.rfind("cuda:", 0) == 0; }

MemoryBudget parse_max_memory(const MaxMemory& max_memory) {
  MemoryBudget budget;
  std::map<std::string, std::string> spelled_as;
  for (const auto& [key, value] : max_memory) {
    const std::string device = canonical_device(key);
    if (auto seen = spelled_as.find(device); seen != spelled_as.end())
      throw Error("max_memory names " + device + " twice ('" + seen->second + "' and '" + key + "')");
    spelled_as[device] = key;
    uint64_t bytes = 0;
    try {
      bytes = parse_memory_size(value);
    } catch (const Error& e) {
      throw Error("max_memory[\"" + key + "\"]: " + e.what());
    }
    budget.emplace_back(device, bytes);
  }
  std::stable_sort(budget.begin(), budget.end(),
                   [](const auto& a, const auto& b) { return device_rank(a.first) < device_rank(b.first); });
  return budget;
}

}  // namespace diffuse
