// The process group, communicators and data-parallel helpers, with real processes: each
// multi-process test starts 2 or 4 ranks of tests/helper_distributed (torchrun's variables set, a
// free port) on the CPU over Gloo, or with DIFFUSE_TEST_DEVICE=cuda on one GPU each over NCCL. Every
// child runs under a deadline and is killed when the test ends, so that nothing hangs.

#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <fstream>

#include "diffuse/distributed/distributed.hpp"
#include "diffuse/error.hpp"
#include "diffuse/io/image.hpp"
#include "support/multi_process.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
using test::describe;
using test::Outcome;
using test::ProcessGroup;
namespace fs = std::filesystem;

namespace {

fs::path helper() { return fs::path(DIFFUSE_TEST_BINARY_DIR) / "helper_distributed"; }
fs::path example(const std::string& name) { return fs::path(DIFFUSE_EXAMPLES_BINARY_DIR) / name; }

bool on_cuda() {
  const char* device = std::getenv("DIFFUSE_TEST_DEVICE");
  return device != nullptr && std::string(device).rfind("cuda", 0) == 0;
}

// NCCL needs a GPU per rank.
#define REQUIRE_RANKS(world)                                                                          \
  do {                                                                                                \
    if (on_cuda() && static_cast<int>(at::getNumGPUs()) < (world))                                    \
      GTEST_SKIP() << (world) << " ranks need " << (world) << " GPUs, " << at::getNumGPUs() << " seen"; \
  } while (0)

// Starts `world` ranks of the helper (or only `which` of them), with the distributed timeout.
std::vector<Outcome> run_ranks(int world, const std::vector<std::string>& args, double timeout_seconds,
                               double deadline_seconds, std::vector<int> which = {}) {
  return test::run_ranks(helper(), world, args, deadline_seconds,
                         {{"DIFFUSE_DIST_TIMEOUT", std::to_string(timeout_seconds)}}, std::move(which));
}

void expect_all_succeed(const std::vector<Outcome>& outcomes) {
  for (const Outcome& o : outcomes) EXPECT_EQ(o.exit_code, 0) << describe(outcomes);
  for (const Outcome& o : outcomes)
    if (const std::string line = test::line_from(o.output, "ok "); !line.empty()) std::printf("[ measured ] %s\n", line.c_str());
}

}  // namespace

// ---- split_between_processes, in process --------------------------------------------------------

TEST(SplitBetweenProcesses, MatchesAccelerateForManySizes) {
  for (int64_t n = 0; n <= 40; ++n) {
    for (int world = 1; world <= 9; ++world) {
      // Accelerate: divmod(n, world); start = r * q + min(r, extra); end = start + q + (r < extra).
      const int64_t q = n / world, extra = n % world;
      std::vector<int64_t> concatenated;
      for (int r = 0; r < world; ++r) {
        const ProcessShare share = process_share(n, r, world);
        ASSERT_EQ(share.begin, r * q + std::min<int64_t>(r, extra)) << n << " " << world << " " << r;
        ASSERT_EQ(share.size(), q + (r < extra ? 1 : 0)) << n << " " << world << " " << r;
        for (int64_t i : process_indices(n, r, world)) concatenated.push_back(i);
        // Padding: every rank has ceil(n / world), the extra entries repeating the slice's last one.
        const auto padded = process_indices(n, r, world, true);
        ASSERT_EQ(static_cast<int64_t>(padded.size()), n == 0 ? 0 : q + (extra > 0 ? 1 : 0)) << n << " " << world;
        for (size_t i = static_cast<size_t>(share.size()); i < padded.size(); ++i)
          ASSERT_EQ(padded[i], share.size() > 0 ? share.end - 1 : n - 1);
      }
      // Contiguous, in order, everything exactly once.
      ASSERT_EQ(static_cast<int64_t>(concatenated.size()), n);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(concatenated[static_cast<size_t>(i)], i);
    }
  }
}

TEST(SplitBetweenProcesses, KnownExamples) {
  const std::vector<std::string> items = {"a", "b", "c", "d", "e"};
  EXPECT_EQ(split_between_processes(items, 0, 2), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(split_between_processes(items, 1, 2), (std::vector<std::string>{"d", "e"}));
  EXPECT_EQ(split_between_processes(items, 1, 2, true), (std::vector<std::string>{"d", "e", "e"}));
  EXPECT_EQ(split_between_processes(items, 2, 3), (std::vector<std::string>{"e"}));
  EXPECT_EQ(split_between_processes(items, 2, 3, true), (std::vector<std::string>{"e", "e"}));
  // More ranks than items: the last ranks get nothing, or the last item when padding.
  EXPECT_TRUE(split_between_processes(items, 6, 8).empty());
  EXPECT_EQ(split_between_processes(items, 6, 8, true), (std::vector<std::string>{"e"}));
  EXPECT_TRUE(split_between_processes(std::vector<int>{}, 0, 3, true).empty());
}

TEST(SplitBetweenProcesses, BadRankOrWorld) {
  EXPECT_THROW(process_share(4, 2, 2), Error);
  EXPECT_THROW(process_share(4, -1, 2), Error);
  EXPECT_THROW(process_share(4, 0, 0), Error);
  EXPECT_THROW(process_share(-1, 0, 1), Error);
}

// ---- a world of one, in process -----------------------------------------------------------------

TEST(Distributed, WorldOfOneWithoutEnvironment) {
  for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) unsetenv(name);
  Distributed dist = Distributed::init({.device = test::test_device().str(), .timeout = std::chrono::seconds(5)});
  EXPECT_EQ(dist.rank(), 0);
  EXPECT_EQ(dist.world_size(), 1);
  EXPECT_TRUE(dist.is_main_process());
  EXPECT_EQ(dist.device(), test::test_device());
  dist.barrier();
  const std::vector<std::string> prompts = {"a", "b", "c"};
  EXPECT_EQ(dist.split_between_processes(prompts), prompts);
  EXPECT_EQ(dist.gather_to_main(prompts), prompts);
  Communicator& comm = dist.communicator();
  EXPECT_EQ(comm.size(), 1);
  const at::Tensor x = at::arange(6, at::TensorOptions().device(dist.device())).view({2, 3}).to(at::kFloat);
  EXPECT_TRUE(comm.all_gather(x, 1).cpu().equal(x.cpu()));
  EXPECT_TRUE(comm.all_to_all(x, 0, 1).cpu().equal(x.cpu()));
  EXPECT_TRUE(dist.gather_to_main(x).cpu().equal(x.cpu()));
  comm.barrier();
}

TEST(Distributed, BadEnvironmentIsAnError) {
  struct Restore {
    ~Restore() {
      for (const char* name : {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) unsetenv(name);
    }
  } restore;
  setenv("RANK", "0", 1);
  EXPECT_THROW(Distributed::init({.device = "cpu"}), Error);  // WORLD_SIZE missing
  setenv("WORLD_SIZE", "2", 1);
  EXPECT_THROW(Distributed::init({.device = "cpu"}), Error);  // MASTER_ADDR missing
  setenv("RANK", "2", 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", "1", 1);
  try {
    Distributed::init({.device = "cpu"});
    FAIL() << "RANK outside the world accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("RANK=2"), std::string::npos) << e.what();
  }
  setenv("RANK", "zero", 1);
  EXPECT_THROW(Distributed::init({.device = "cpu"}), Error);
  setenv("RANK", "0", 1);
  EXPECT_THROW(Distributed::init({.device = "cpu", .backend = "mpi"}), Error);
}

// ---- every collective, across processes --------------------------------------------------------

TEST(MultiProcess, CollectivesTwoRanks) {
  REQUIRE_RANKS(2);
  expect_all_succeed(run_ranks(2, {"collectives"}, 30, 60));
}

TEST(MultiProcess, CollectivesFourRanks) {
  REQUIRE_RANKS(4);
  expect_all_succeed(run_ranks(4, {"collectives"}, 30, 90));
}

TEST(MultiProcess, SplitAndGatherTwoRanks) {
  REQUIRE_RANKS(2);
  expect_all_succeed(run_ranks(2, {"split_and_gather"}, 30, 60));
}

TEST(MultiProcess, SplitAndGatherFourRanks) {
  REQUIRE_RANKS(4);
  expect_all_succeed(run_ranks(4, {"split_and_gather"}, 30, 90));
}

// ---- failures: named, fast, never a hang -------------------------------------------------------

namespace {

// Every rank but `leaver` must fail with an error naming it, well before `within` seconds.
void expect_others_name(const std::vector<Outcome>& outcomes, int leaver, double within, const std::string& words) {
  for (size_t r = 0; r < outcomes.size(); ++r) {
    if (static_cast<int>(r) == leaver) continue;
    const Outcome& o = outcomes[r];
    EXPECT_EQ(o.exit_code, 3) << describe(outcomes);
    EXPECT_FALSE(o.killed_at_deadline) << describe(outcomes);
    EXPECT_NE(o.output.find("rank " + std::to_string(leaver) + " " + words), std::string::npos) << describe(outcomes);
    EXPECT_LT(o.seconds, within) << describe(outcomes);
  }
  const Outcome& first_other = outcomes[leaver == 0 ? 1 : 0];
  if (const std::string line = test::line_from(first_other.output, "error after"); !line.empty())
    std::printf("[ measured ] %s\n", line.c_str());
}

}  // namespace

TEST(MultiProcess, RankThatReturnsEarlyIsNamedTwoRanks) {
  REQUIRE_RANKS(2);
  const auto outcomes = run_ranks(2, {"leave", "1", "return"}, 5, 30);
  EXPECT_EQ(outcomes[1].exit_code, 0) << describe(outcomes);
  expect_others_name(outcomes, 1, 15, "exited");
}

TEST(MultiProcess, RankThatIsKilledIsNamedFourRanks) {
  REQUIRE_RANKS(4);
  const auto outcomes = run_ranks(4, {"leave", "2", "kill"}, 5, 30);
  EXPECT_EQ(outcomes[2].exit_code, -SIGKILL) << describe(outcomes);
  expect_others_name(outcomes, 2, 15, "died");
}

TEST(MultiProcess, StoreHostThatIsKilledIsNamedTwoRanks) {
  REQUIRE_RANKS(2);
  const auto outcomes = run_ranks(2, {"leave", "0", "kill"}, 5, 30);
  expect_others_name(outcomes, 0, 15, "is gone");
}

TEST(MultiProcess, RankThatReturnsEarlyIsNamedFourRanks) {
  REQUIRE_RANKS(4);
  const auto outcomes = run_ranks(4, {"leave", "3", "return"}, 5, 30);
  EXPECT_EQ(outcomes[3].exit_code, 0) << describe(outcomes);
  expect_others_name(outcomes, 3, 15, "exited");
}

TEST(MultiProcess, RankThatNeverReachesACollectiveIsNamedAfterTheTimeout) {
  REQUIRE_RANKS(2);
  // Rank 1 sleeps instead of calling the collective; it is killed once rank 0 has answered.
  ProcessGroup group;
  const std::string port = std::to_string(test::free_port());
  for (int r = 0; r < 2; ++r)
    group.start({helper().string(), "leave", "1", "hang"},
                {{"RANK", std::to_string(r)}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", std::to_string(r)},
                 {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", port}, {"DIFFUSE_DIST_TIMEOUT", "3"}});
  const auto outcomes = group.wait(std::chrono::seconds(20), 0);
  const Outcome& o = outcomes[0];
  EXPECT_EQ(o.exit_code, 3) << describe(outcomes);
  EXPECT_NE(o.output.find("rank 1 has not reached it"), std::string::npos) << describe(outcomes);
  EXPECT_FALSE(o.killed_at_deadline) << describe(outcomes);
  EXPECT_LT(o.seconds, 12) << describe(outcomes);  // the 3 s timeout (Gloo's, per step) and a diagnosis
  EXPECT_TRUE(outcomes[1].killed_at_deadline);
  if (const std::string line = test::line_from(o.output, "error after"); !line.empty())
    std::printf("[ measured ] %s\n", line.c_str());
}

TEST(MultiProcess, RankThatNeverArrivesAtInitIsNamed) {
  // Only rank 0 of 2 starts: it hosts the store and names rank 1 after the timeout.
  auto outcomes = run_ranks(2, {"init_only"}, 2, 20, {0});
  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_EQ(outcomes[0].exit_code, 3) << describe(outcomes);
  EXPECT_NE(outcomes[0].output.find("rank 1 did not arrive within 2.0 s"), std::string::npos) << describe(outcomes);
  EXPECT_LT(outcomes[0].seconds, 10) << describe(outcomes);
  // Only rank 1 starts: nobody hosts the store, and rank 1 says whose store it could not reach. On the
  // GPUs rank 1 is cuda:1.
  if (on_cuda() && at::getNumGPUs() < 2) GTEST_SKIP() << "rank 1 needs a second GPU, " << at::getNumGPUs() << " seen";
  outcomes = run_ranks(2, {"init_only"}, 2, 20, {1});
  EXPECT_EQ(outcomes[0].exit_code, 3) << describe(outcomes);
  EXPECT_NE(outcomes[0].output.find("could not reach the rendezvous store"), std::string::npos) << describe(outcomes);
  EXPECT_NE(outcomes[0].output.find("hosted by rank 0"), std::string::npos) << describe(outcomes);
  EXPECT_LT(outcomes[0].seconds, 10) << describe(outcomes);
}

// ---- the launcher ---------------------------------------------------------------------------------

TEST(Launcher, StartsRanksAndPrefixesTheirOutput) {
  REQUIRE_RANKS(2);
  ProcessGroup group;
  group.start({example("diffuse-launch").string(), "--nproc-per-node", "2", helper().string(), "collectives"},
              {{"DIFFUSE_DIST_TIMEOUT", "30"}});
  const auto outcomes = group.wait(std::chrono::seconds(60));
  EXPECT_EQ(outcomes[0].exit_code, 0) << describe(outcomes);
  EXPECT_NE(outcomes[0].output.find("[rank 0] ok "), std::string::npos) << describe(outcomes);
  EXPECT_NE(outcomes[0].output.find("[rank 1] ok "), std::string::npos) << describe(outcomes);
}

TEST(Launcher, StopsEveryRankWhenOneFailsAndNamesIt) {
  REQUIRE_RANKS(2);
  ProcessGroup group;
  // Rank 1 hangs forever; rank 0 fails after the timeout; the launcher must stop rank 1 and say so.
  group.start({example("diffuse-launch").string(), "--nproc-per-node", "2", helper().string(), "leave", "1", "hang"},
              {{"DIFFUSE_DIST_TIMEOUT", "2"}});
  const auto outcomes = group.wait(std::chrono::seconds(30));
  EXPECT_FALSE(outcomes[0].killed_at_deadline) << describe(outcomes);
  EXPECT_EQ(outcomes[0].exit_code, 3) << describe(outcomes);
  EXPECT_NE(outcomes[0].output.find("diffuse-launch: rank 0 exited with code 3"), std::string::npos) << describe(outcomes);
  EXPECT_NE(outcomes[0].output.find("[rank 0] error after"), std::string::npos) << describe(outcomes);
}

TEST(Launcher, BadArgumentsAreExplained) {
  ProcessGroup group;
  group.start({example("diffuse-launch").string(), "--nproc-per-node", "zero", "true"}, {});
  group.start({example("diffuse-launch").string(), "--nproc-per-node", "1", "/nonexistent/program"}, {});
  const auto outcomes = group.wait(std::chrono::seconds(20));
  EXPECT_EQ(outcomes[0].exit_code, 2) << describe(outcomes);
  EXPECT_NE(outcomes[0].output.find("--nproc-per-node"), std::string::npos) << describe(outcomes);
  EXPECT_NE(outcomes[1].exit_code, 0) << describe(outcomes);
  EXPECT_NE(outcomes[1].output.find("/nonexistent/program"), std::string::npos) << describe(outcomes);
}

// ---- data parallel generation ---------------------------------------------------------------------

TEST(DataParallel, TwoProcessesMakeTheImagesOfOne) {
  DIFFUSE_REQUIRE_FIXTURES();
  REQUIRE_RANKS(2);
  const fs::path dir = test::temporary_folder("data_parallel");
  const std::vector<std::string> prompts = {"a photo of a dog", "a cat on a mat", "a red house by the sea"};
  std::ofstream(dir / "prompts.txt") << prompts[0] << "\n" << prompts[1] << "\n\n" << prompts[2] << "\n";
  const std::string device = on_cuda() ? "" : "cpu";
  auto arguments = [&](const fs::path& out) {
    std::vector<std::string> args = {example("data_parallel").string(), "--model", test::tiny_flux_pipeline().string(),
                                     "--prompts-file", (dir / "prompts.txt").string(), "--height", "64", "--width", "96",
                                     "--steps", "3", "--max-sequence-length", "32", "--seed", "7",
                                     "--output-dir", out.string(), "--quiet"};
    return args;
  };
  ProcessGroup group;
  // Two processes through the launcher, one alone with no variables, and generate for the last prompt.
  std::vector<std::string> two = {example("diffuse-launch").string(), "--nproc-per-node", "2"};
  for (auto& a : arguments(dir / "two")) two.push_back(a);
  group.start(two, {{"DIFFUSE_DIST_TIMEOUT", "60"}});
  group.start(arguments(dir / "one"), {{"OMP_NUM_THREADS", "1"}});
  group.start({example("generate").string(), "--model", test::tiny_flux_pipeline().string(), "--prompt", prompts[2],
               "--height", "64", "--width", "96", "--steps", "3", "--max-sequence-length", "32", "--seed", "9",
               "--output", (dir / "generate.png").string(), "--quiet", "--device", on_cuda() ? "cuda:0" : "cpu"},
              {{"OMP_NUM_THREADS", "1"}});
  const auto outcomes = group.wait(std::chrono::seconds(120));
  for (const Outcome& o : outcomes) ASSERT_EQ(o.exit_code, 0) << describe(outcomes);
  // Rank 0 takes prompts 0 and 1, rank 1 prompt 2 (seed 7 + 2); alone, rank 0 takes all three.
  EXPECT_NE(outcomes[0].output.find("[rank 0] 3 images from 2 processes"), std::string::npos) << describe(outcomes);
  const std::vector<std::pair<std::string, std::string>> same = {
      {"two/result_0_0.png", "one/result_0_0.png"},
      {"two/result_0_1.png", "one/result_0_1.png"},
      {"two/result_1_0.png", "one/result_0_2.png"},
      {"two/result_1_0.png", "generate.png"}};
  for (const auto& [a, b] : same) {
    ASSERT_TRUE(fs::exists(dir / a)) << a << "\n" << describe(outcomes);
    ASSERT_TRUE(fs::exists(dir / b)) << b << "\n" << describe(outcomes);
    const Image x = Image::load_png(dir / a), y = Image::load_png(dir / b);
    EXPECT_EQ(x.width, 96);
    EXPECT_EQ(x.height, 64);
    EXPECT_TRUE(x.pixels == y.pixels) << a << " differs from " << b;
  }
  EXPECT_FALSE(fs::exists(dir / "two" / "result_1_1.png"));
  // Different prompts (and seeds) make different images.
  EXPECT_FALSE(Image::load_png(dir / "one/result_0_0.png").pixels == Image::load_png(dir / "one/result_0_1.png").pixels);
}

namespace {

// The guide's data-parallel example on a fixture of another family: prompts split over two processes,
// each with its own seed (the family's guidance and negative prompt in `options`); each image equals
// generate's for its prompt.
void expect_each_prompt_gets_its_image_alone(const std::string& fixture, const std::vector<std::string>& options) {
  const fs::path dir = test::temporary_folder("data_parallel_" + fixture);
  const std::string model = (*test::fixtures_dir() / fixture / "pipeline").string();
  const std::vector<std::string> prompts = {"a photo of a dog", "a cat on a mat"};
  std::vector<std::string> common = {"--model", model, "--height", "64", "--width", "96", "--steps", "3", "--quiet"};
  common.insert(common.end(), options.begin(), options.end());
  ProcessGroup group;
  std::vector<std::string> two = {example("diffuse-launch").string(), "--nproc-per-node", "2",
                                  example("data_parallel").string(), "--prompt", prompts[0], "--prompt", prompts[1],
                                  "--seed", "7", "--output-dir", (dir / "two").string()};
  two.insert(two.end(), common.begin(), common.end());
  group.start(two, {{"DIFFUSE_DIST_TIMEOUT", "60"}});
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<std::string> alone = {example("generate").string(), "--prompt", prompts[i], "--seed",
                                      std::to_string(7 + i), "--output", (dir / ("alone_" + std::to_string(i) + ".png")).string(),
                                      "--device", on_cuda() ? "cuda:0" : "cpu"};
    alone.insert(alone.end(), common.begin(), common.end());
    group.start(alone, {{"OMP_NUM_THREADS", "1"}});
  }
  const auto outcomes = group.wait(std::chrono::seconds(120));
  for (const Outcome& o : outcomes) ASSERT_EQ(o.exit_code, 0) << describe(outcomes);
  const std::vector<std::pair<std::string, std::string>> same = {{"two/result_0_0.png", "alone_0.png"},
                                                                 {"two/result_1_0.png", "alone_1.png"}};
  for (const auto& [a, b] : same) {
    ASSERT_TRUE(fs::exists(dir / a)) << a << "\n" << describe(outcomes);
    EXPECT_TRUE(Image::load_png(dir / a).pixels == Image::load_png(dir / b).pixels) << a << " differs from " << b;
  }
}

}  // namespace

TEST(DataParallel, StableDiffusionTwoProcessesGiveEachPromptItsImageAlone) {
  DIFFUSE_REQUIRE_FIXTURES();
  REQUIRE_RANKS(2);
  expect_each_prompt_gets_its_image_alone("tiny-sd", {"--negative-prompt", "blurry", "--guidance", "7.5"});
}

TEST(DataParallel, QwenImageTwoProcessesGiveEachPromptItsImageAlone) {
  DIFFUSE_REQUIRE_FIXTURES();
  REQUIRE_RANKS(2);
  expect_each_prompt_gets_its_image_alone("tiny-qwenimage", {"--negative-prompt", "blurry", "--true-cfg-scale", "4",
                                                             "--max-sequence-length", "64"});
}
