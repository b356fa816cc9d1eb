#pragma once
// What the fuzz targets share: inputs made of several files, a scratch folder to write them into (the
// readers take paths), and the rule that decides what a finding is:
//   diffuse::Error is an answer (the input was bad and the message says why);
//   any other exception, a failed FUZZ_CHECK, a sanitizer report, a leak or a hang is a bug.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "diffuse/error.hpp"

namespace diffuse::fuzz {

// Files inside one input are joined by this line (fuzz/make_corpus.py writes the seeds this way).
inline constexpr std::string_view kPartSeparator = "\n--8<--\n";

// The input cut at each separator; the last part takes the rest when there are more than `max_parts`.
std::vector<std::string_view> split_parts(const uint8_t* data, size_t size, size_t max_parts);

// A folder of this process's own under $TMPDIR (or /tmp), removed when the process exits normally.
class ScratchFolder {
 public:
  explicit ScratchFolder(const std::string& name);
  ~ScratchFolder();
  const std::filesystem::path& path() const { return path_; }
  // Writes `bytes` to path()/name, replacing what was there.
  std::filesystem::path write(const std::string& name, std::string_view bytes) const;
  // Removes path()/name if present.
  void remove(const std::string& name) const;

 private:
  std::filesystem::path path_;
};

// The folder of the small tokenizers that make_corpus.py writes (fuzz/data), or $DIFFUSE_FUZZ_DATA.
std::filesystem::path data_folder();

// DIFFUSE_FUZZ_VERBOSE=1 prints each expected error: to see what the seeds reach.
void note_error(const Error& error);

// Reports a bug and aborts, which libFuzzer records as a crash with this input.
[[noreturn]] void fail(const char* what, const std::string& detail);

// Runs `body`; diffuse::Error is an expected outcome (returns false), any other exception is a bug.
template <class Body>
bool expect_result_or_error(const char* what, Body&& body) {
  try {
    body();
    return true;
  } catch (const Error& error) {
    note_error(error);
    return false;
  } catch (const std::exception& other) {
    fail(what, std::string("an exception other than diffuse::Error escaped: ") + typeid(other).name() + ": " +
                   other.what());
  }
}

// Runs `body`, which must not throw at all: any exception is a bug.
template <class Body>
void expect_result(const char* what, Body&& body) {
  try {
    body();
  } catch (const std::exception& error) {
    fail(what, std::string("threw ") + typeid(error).name() + ": " + error.what());
  }
}

}  // namespace diffuse::fuzz

// An invariant of a result that the library promises; its failure is a bug.
#define FUZZ_CHECK(condition, detail)                                                          \
  do {                                                                                         \
    if (!(condition)) ::diffuse::fuzz::fail("FUZZ_CHECK(" #condition ") failed", (detail)); \
  } while (false)
