// Context and CFG parallelism with real processes: each test starts 2 or 4 ranks of
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

// CFG parallelism: the unconditional and the conditional pass on two halves of the ranks, each half
// possibly context-parallel inside; every rank's latents match one process's at every step.
namespace {

bool have_fixture(const char* name) {
  return test::fixtures_dir() && fs::exists(*test::fixtures_dir() / name / "reference.safetensors");
}

// Rank 0 logged the fallback of the call without guidance.
void expect_fallback_logged(const std::vector<Outcome>& outcomes) {
  EXPECT_NE(outcomes.front().output.find("cfg_degree 2 falls back for this call"), std::string::npos)
      << describe(outcomes);
}

}  // namespace

#define EXPECT_CFG_RANKS_SUCCEED(fixture, world, cfg, ring, ulysses)                                    \
  do {                                                                                                  \
    if (!have_fixture(fixture)) GTEST_SKIP() << fixture << " fixtures not found; skipping";             \
    if (test::test_device().is_cuda() && static_cast<int>(at::getNumGPUs()) < (world))                  \
      GTEST_SKIP() << (world) << " ranks need " << (world) << " GPUs, " << at::getNumGPUs() << " seen";  \
    const auto outcomes = run_ranks((world), {"cfg_pipeline", fixture, cfg, ring, ulysses}, kDeadline); \
    expect_all_succeed(outcomes);                                                                       \
    expect_fallback_logged(outcomes);                                                                   \
  } while (0)

// SD: a UNet cannot be split by tokens, so two ranks per image is CFG parallelism alone.
TEST(CfgParallelPipeline, StableDiffusionCfg2) { EXPECT_CFG_RANKS_SUCCEED("tiny-sd", 2, "2", "1", "1"); }
// A world larger than the mesh: ranks 2 and 3 compute alone.
TEST(CfgParallelPipeline, StableDiffusionCfg2InWorldOf4) { EXPECT_CFG_RANKS_SUCCEED("tiny-sd", 4, "2", "1", "1"); }
TEST(CfgParallelPipeline, QwenImageCfg2) { EXPECT_CFG_RANKS_SUCCEED("tiny-qwenimage", 2, "2", "1", "1"); }
TEST(CfgParallelPipeline, QwenImageCfg2xUlysses2) { EXPECT_CFG_RANKS_SUCCEED("tiny-qwenimage", 4, "2", "1", "2"); }
TEST(CfgParallelPipeline, QwenImageCfg2xRing2) { EXPECT_CFG_RANKS_SUCCEED("tiny-qwenimage", 4, "2", "2", "1"); }

TEST(CfgParallelPipeline, RefusesBadConfigs) {
  if (!have_fixture("tiny-sd") || !have_fixture("tiny-qwenimage") || !have_fixture("tiny-flux"))
    GTEST_SKIP() << "fixtures not found; skipping";
  expect_all_succeed(run_ranks(4, {"cfg_config_errors"}, kDeadline));
}
