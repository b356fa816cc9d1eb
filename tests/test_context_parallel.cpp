// Context parallelism with real processes: each test starts 2 or 4 ranks of
// tests/helper_context_parallel (torchrun's variables, a free port) on the CPU over Gloo; each rank
// checks its results against the single-process answer. Every child runs under a deadline and is
// killed when the test ends, so that nothing hangs.

#include <cstdio>
#include <sstream>

#include "support/multi_process.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
using test::describe;
using test::Outcome;
namespace fs = std::filesystem;

namespace {

// Starts `world` ranks of the helper with `args`, waits for them until `deadline_seconds`, kills the
// rest, and returns what each did.
std::vector<Outcome> run_ranks(int world, const std::vector<std::string>& args, double deadline_seconds) {
  return test::run_ranks(fs::path(DIFFUSE_TEST_BINARY_DIR) / "helper_context_parallel", world, args, deadline_seconds,
                         {{"DIFFUSE_DIST_TIMEOUT", "30"}});
}

// Every rank exits 0; rank 0's "ok" lines are printed as the measurements.
void expect_all_succeed(const std::vector<Outcome>& outcomes) {
  for (const Outcome& o : outcomes) EXPECT_EQ(o.exit_code, 0) << describe(outcomes);
  std::istringstream lines(outcomes.front().output);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("ok ", 0) == 0) std::printf("[ measured ] %s\n", line.c_str() + 3);
}

constexpr double kDeadline = 120;

}  // namespace

// Runs `world` ranks with the helper's arguments; on the GPUs (DIFFUSE_TEST_DEVICE=cuda) each rank needs
// its own, so fewer GPUs than ranks skips.
#define EXPECT_RANKS_SUCCEED(world, ...)                                                                   \
  do {                                                                                                     \
    if (test::test_device().is_cuda() && static_cast<int>(at::getNumGPUs()) < (world))                     \
      GTEST_SKIP() << (world) << " ranks need " << (world) << " GPUs, " << at::getNumGPUs() << " seen";     \
    expect_all_succeed(run_ranks((world), __VA_ARGS__, kDeadline));                                       \
  } while (0)

TEST(ContextParallelAttention, Ulysses2) { EXPECT_RANKS_SUCCEED(2, {"attention", "1", "2"}); }
TEST(ContextParallelAttention, Ulysses4) { EXPECT_RANKS_SUCCEED(4, {"attention", "1", "4"}); }
TEST(ContextParallelAttention, Ring2) { EXPECT_RANKS_SUCCEED(2, {"attention", "2", "1"}); }
TEST(ContextParallelAttention, Ring4) { EXPECT_RANKS_SUCCEED(4, {"attention", "4", "1"}); }
TEST(ContextParallelAttention, Unified2x2) { EXPECT_RANKS_SUCCEED(4, {"attention", "2", "2"}); }
// A mesh smaller than the world: ranks 2 and 3 take no part and compute alone.
TEST(ContextParallelAttention, Ring2InWorldOf4) { EXPECT_RANKS_SUCCEED(4, {"attention", "2", "1"}); }

TEST(ContextParallelTransformer, Ulysses2) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_RANKS_SUCCEED(2, {"transformer", "1", "2"});
}
TEST(ContextParallelTransformer, Ulysses4) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_RANKS_SUCCEED(4, {"transformer", "1", "4"});
}
TEST(ContextParallelTransformer, Ring2) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_RANKS_SUCCEED(2, {"transformer", "2", "1"});
}
TEST(ContextParallelTransformer, Ring4) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_RANKS_SUCCEED(4, {"transformer", "4", "1"});
}
TEST(ContextParallelTransformer, Unified2x2) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_RANKS_SUCCEED(4, {"transformer", "2", "2"});
}
TEST(ContextParallelTransformer, RefusesBadConfigs) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_RANKS_SUCCEED(4, {"config_errors"});
}

// A whole FluxPipeline call under each mode reproduces diffusers' latents on every rank.
TEST(ContextParallelPipeline, Ulysses2) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_RANKS_SUCCEED(2, {"pipeline", "1", "2"});
}
TEST(ContextParallelPipeline, Ring2) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_RANKS_SUCCEED(2, {"pipeline", "2", "1"});
}
TEST(ContextParallelPipeline, Unified2x2) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_RANKS_SUCCEED(4, {"pipeline", "2", "2"});
}
