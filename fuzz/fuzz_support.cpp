#include "fuzz_support.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace diffuse::fuzz {

std::vector<std::string_view> split_parts(const uint8_t* data, size_t size, size_t max_parts) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  size_t begin = 0;
  while (parts.size() + 1 < max_parts) {
    const size_t at = input.find(kPartSeparator, begin);
    if (at == std::string_view::npos) break;
    parts.push_back(input.substr(begin, at - begin));
    begin = at + kPartSeparator.size();
  }
  parts.push_back(input.substr(begin));
  return parts;
}

ScratchFolder::ScratchFolder(const std::string& name) {
  const char* tmp = std::getenv("TMPDIR");
  const std::filesystem::path root = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  path_ = root / ("diffuse-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

ScratchFolder::~ScratchFolder() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::filesystem::path ScratchFolder::write(const std::string& name, std::string_view bytes) const {
  const std::filesystem::path file = path_ / name;
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) fail("scratch folder", "cannot write " + file.string());
  return file;
}

void ScratchFolder::remove(const std::string& name) const {
  std::error_code ignored;
  std::filesystem::remove(path_ / name, ignored);
}

std::filesystem::path data_folder() {
  const char* env = std::getenv("DIFFUSE_FUZZ_DATA");
  return env != nullptr && *env != '\0' ? std::filesystem::path(env) : std::filesystem::path(DIFFUSE_FUZZ_DATA_DIR);
}

void note_error(const Error& error) {
  static const bool verbose = [] {
    const char* env = std::getenv("DIFFUSE_FUZZ_VERBOSE");
    return env != nullptr && std::string_view(env) == "1";
  }();
  if (verbose) std::fprintf(stderr, "diffuse::Error: %s\n", error.what());
}

void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "\n== diffuse fuzz: BUG in %s: %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace diffuse::fuzz
