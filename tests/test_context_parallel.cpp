// Context parallelism with real processes: each test starts 2 or 4 ranks of
// tests/helper_context_parallel (torchrun's variables, a free port) on the CPU over Gloo; each rank
// checks its results against the single-process answer. Every child runs under a deadline and is
// killed when the test ends, so that nothing hangs.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "diffuse/error.hpp"
#include "support/test_support.hpp"

extern char** environ;

using namespace diffuse;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t length = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  close(fd);
  return ntohs(addr.sin_port);
}

struct Outcome {
  int exit_code = -1;  // -N: killed by signal N
  bool killed_at_deadline = false;
  std::string output;
};

// Starts `world` ranks of the helper with `args`, waits for them until `deadline_seconds`, kills the
// rest, and returns what each did.
std::vector<Outcome> run_ranks(int world, const std::vector<std::string>& args, double deadline_seconds) {
  static int counter = 0;
  const fs::path dir = test::temporary_folder("context_parallel_" + std::to_string(counter++));
  const std::string port = std::to_string(free_port());
  std::map<std::string, std::string> base;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const size_t eq = entry.find('=');
    base[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  std::vector<Outcome> outcomes(static_cast<size_t>(world));
  std::map<pid_t, int> running;
  for (int r = 0; r < world; ++r) {
    std::map<std::string, std::string> env = base;
    env["RANK"] = env["LOCAL_RANK"] = std::to_string(r);
    env["WORLD_SIZE"] = env["LOCAL_WORLD_SIZE"] = std::to_string(world);
    env["MASTER_ADDR"] = "127.0.0.1";
    env["MASTER_PORT"] = port;
    env["DIFFUSE_DIST_TIMEOUT"] = "30";
    env["OMP_NUM_THREADS"] = "1";
    std::vector<std::string> env_strings, argv = {(fs::path(DIFFUSE_TEST_BINARY_DIR) / "helper_context_parallel").string()};
    argv.insert(argv.end(), args.begin(), args.end());
    for (const auto& [key, value] : env) env_strings.push_back(key + "=" + value);
    std::vector<char*> envp, argp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    for (auto& s : argv) argp.push_back(s.data());
    argp.push_back(nullptr);
    const std::string log = (dir / ("rank_" + std::to_string(r) + ".log")).string();
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, argp[0], &actions, nullptr, argp.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      for (auto& [child, index] : running) kill(child, SIGKILL), waitpid(child, nullptr, 0);
      throw Error("cannot start " + argv[0] + ": " + std::strerror(rc));
    }
    running[pid] = r;
  }
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(deadline_seconds));
  auto finish = [&](pid_t pid, int status, bool at_deadline) {
    Outcome& o = outcomes[static_cast<size_t>(running[pid])];
    o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    o.killed_at_deadline = at_deadline;
    running.erase(pid);
  };
  while (!running.empty() && Clock::now() < until) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0 && running.count(pid)) finish(pid, status, false);
    else std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  while (!running.empty()) {
    const pid_t pid = running.begin()->first;
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    finish(pid, status, true);
  }
  for (int r = 0; r < world; ++r) {
    std::ifstream in(dir / ("rank_" + std::to_string(r) + ".log"));
    std::stringstream text;
    text << in.rdbuf();
    outcomes[static_cast<size_t>(r)].output = text.str();
  }
  return outcomes;
}

std::string describe(const std::vector<Outcome>& outcomes) {
  std::string out;
  for (size_t i = 0; i < outcomes.size(); ++i)
    out += "--- rank " + std::to_string(i) + ": exit " + std::to_string(outcomes[i].exit_code) +
           (outcomes[i].killed_at_deadline ? " (killed at the deadline)" : "") + "\n" + outcomes[i].output;
  return out;
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

TEST(ContextParallelAttention, Ulysses2) { expect_all_succeed(run_ranks(2, {"attention", "1", "2"}, kDeadline)); }
TEST(ContextParallelAttention, Ulysses4) { expect_all_succeed(run_ranks(4, {"attention", "1", "4"}, kDeadline)); }
TEST(ContextParallelAttention, Ring2) { expect_all_succeed(run_ranks(2, {"attention", "2", "1"}, kDeadline)); }
TEST(ContextParallelAttention, Ring4) { expect_all_succeed(run_ranks(4, {"attention", "4", "1"}, kDeadline)); }
TEST(ContextParallelAttention, Unified2x2) { expect_all_succeed(run_ranks(4, {"attention", "2", "2"}, kDeadline)); }
// A mesh smaller than the world: ranks 2 and 3 take no part and compute alone.
TEST(ContextParallelAttention, Ring2InWorldOf4) { expect_all_succeed(run_ranks(4, {"attention", "2", "1"}, kDeadline)); }

TEST(ContextParallelTransformer, Ulysses2) {
  DIFFUSE_REQUIRE_FIXTURES();
  expect_all_succeed(run_ranks(2, {"transformer", "1", "2"}, kDeadline));
}
TEST(ContextParallelTransformer, Ulysses4) {
  DIFFUSE_REQUIRE_FIXTURES();
  expect_all_succeed(run_ranks(4, {"transformer", "1", "4"}, kDeadline));
}
TEST(ContextParallelTransformer, Ring2) {
  DIFFUSE_REQUIRE_FIXTURES();
  expect_all_succeed(run_ranks(2, {"transformer", "2", "1"}, kDeadline));
}
TEST(ContextParallelTransformer, Ring4) {
  DIFFUSE_REQUIRE_FIXTURES();
  expect_all_succeed(run_ranks(4, {"transformer", "4", "1"}, kDeadline));
}
TEST(ContextParallelTransformer, Unified2x2) {
  DIFFUSE_REQUIRE_FIXTURES();
  expect_all_succeed(run_ranks(4, {"transformer", "2", "2"}, kDeadline));
}
TEST(ContextParallelTransformer, RefusesBadConfigs) {
  DIFFUSE_REQUIRE_FIXTURES();
  expect_all_succeed(run_ranks(4, {"config_errors"}, kDeadline));
}
