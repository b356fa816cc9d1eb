// Qwen-Image's transformer under context parallelism with real processes: each test starts 2 or 4 ranks
// of tests/helper_qwenimage_context_parallel (torchrun's variables, a free port) on the CPU over Gloo;
// each rank checks its results against the single-process answer (and the fixture). Padded text is the
// new part: its mask is cut with the tokens, and every K/V block is attended to with its own part.

#include <cstdio>
#include <sstream>

#include "support/multi_process.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
using test::describe;
using test::Outcome;
namespace fs = std::filesystem;

namespace {

std::vector<Outcome> run_ranks(int world, const std::vector<std::string>& args, double deadline_seconds) {
  return test::run_ranks(fs::path(DIFFUSE_TEST_BINARY_DIR) / "helper_qwenimage_context_parallel", world, args,
                         deadline_seconds, {{"DIFFUSE_DIST_TIMEOUT", "30"}});
}

// Every rank exits 0; rank 0's "ok" lines are printed as the measurements.
void expect_all_succeed(const std::vector<Outcome>& outcomes) {
  for (const Outcome& o : outcomes) EXPECT_EQ(o.exit_code, 0) << describe(outcomes);
  std::istringstream lines(outcomes.front().output);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("ok ", 0) == 0) std::printf("[ measured ] %s\n", line.c_str() + 3);
}

constexpr double kDeadline = 120;

bool have_qwen_fixtures() {
  return test::fixtures_dir() && fs::exists(*test::fixtures_dir() / "tiny-qwenimage" / "reference.safetensors");
}

}  // namespace

#define EXPECT_RANKS_SUCCEED(world, ...)                                                                   \
  do {                                                                                                     \
    if (test::test_device().is_cuda() && static_cast<int>(at::getNumGPUs()) < (world))                     \
      GTEST_SKIP() << (world) << " ranks need " << (world) << " GPUs, " << at::getNumGPUs() << " seen";     \
    expect_all_succeed(run_ranks((world), __VA_ARGS__, kDeadline));                                       \
  } while (0)

#define REQUIRE_QWEN_FIXTURES()                                                   \
  do {                                                                            \
    if (!have_qwen_fixtures()) GTEST_SKIP() << "tiny-qwenimage fixtures not found; skipping"; \
  } while (0)

TEST(ContextParallelPaddedAttention, Ulysses2) { EXPECT_RANKS_SUCCEED(2, {"attention", "1", "2"}); }
TEST(ContextParallelPaddedAttention, Ring2) { EXPECT_RANKS_SUCCEED(2, {"attention", "2", "1"}); }
TEST(ContextParallelPaddedAttention, Ulysses4) { EXPECT_RANKS_SUCCEED(4, {"attention", "1", "4"}); }
TEST(ContextParallelPaddedAttention, Ring4) { EXPECT_RANKS_SUCCEED(4, {"attention", "4", "1"}); }
TEST(ContextParallelPaddedAttention, Unified2x2) { EXPECT_RANKS_SUCCEED(4, {"attention", "2", "2"}); }
// A mesh smaller than the world: ranks 2 and 3 take no part and compute alone.
TEST(ContextParallelPaddedAttention, Ring2InWorldOf4) { EXPECT_RANKS_SUCCEED(4, {"attention", "2", "1"}); }

TEST(QwenImageContextParallel, Ulysses2) {
  REQUIRE_QWEN_FIXTURES();
  EXPECT_RANKS_SUCCEED(2, {"transformer", "1", "2"});
}
TEST(QwenImageContextParallel, Ring2) {
  REQUIRE_QWEN_FIXTURES();
  EXPECT_RANKS_SUCCEED(2, {"transformer", "2", "1"});
}
TEST(QwenImageContextParallel, Ulysses4) {
  REQUIRE_QWEN_FIXTURES();
  EXPECT_RANKS_SUCCEED(4, {"transformer", "1", "4"});
}
TEST(QwenImageContextParallel, Ring4) {
  REQUIRE_QWEN_FIXTURES();
  EXPECT_RANKS_SUCCEED(4, {"transformer", "4", "1"});
}
TEST(QwenImageContextParallel, Unified2x2) {
  REQUIRE_QWEN_FIXTURES();
  EXPECT_RANKS_SUCCEED(4, {"transformer", "2", "2"});
}
TEST(QwenImageContextParallel, RefusesBadConfigs) {
  REQUIRE_QWEN_FIXTURES();
  EXPECT_RANKS_SUCCEED(4, {"config_errors"});
}
