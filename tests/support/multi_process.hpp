#pragma once
// Starting the processes of a multi-process test: the ranks of a helper program with torchrun's
// variables on a free port, or any program. Every child writes stdout and stderr to a log of its own,
// runs under a deadline and is killed (SIGKILL) when the deadline passes or its group goes out of
// scope, so that a test never hangs and never leaves a process behind.
//
//   const auto outcomes = test::run_ranks(helper, 2, {"collectives"}, 60, {{"DIFFUSE_DIST_TIMEOUT", "30"}});
//   for (const auto& o : outcomes) EXPECT_EQ(o.exit_code, 0) << test::describe(outcomes);

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace diffuse::test {

// How one child ended.
struct Outcome {
  int exit_code = -1;               // -N: killed by signal N
  bool killed_at_deadline = false;  // it was still running when the wait ended
  std::string output;               // its stdout and stderr
  double seconds = 0;               // from its start to its exit
  long max_rss_kb = 0;              // its peak resident memory (getrusage's ru_maxrss)
};

// A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT).
int free_port();

// Children started one by one; the destructor kills those still running.
class ProcessGroup {
 public:
  ProcessGroup();
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  // Starts argv[0] (a path, not looked up in PATH) with this process's environment less torchrun's
  // variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), plus
  // `extra_env`. Returns the child's index. Throws diffuse::Error when it cannot start.
  size_t start(const std::vector<std::string>& argv, const std::map<std::string, std::string>& extra_env = {});

  // What child `index` has written so far.
  std::string output(size_t index) const;
  // Sends `signal` to child `index` if it is still running.
  void signal(size_t index, int signal);
  // Waits until every child has exited (or only child `until_exit_of`, when given) or `deadline`
  // has passed; then kills the rest. Returns every child's outcome, in start order.
  std::vector<Outcome> wait(std::chrono::duration<double> deadline, int until_exit_of = -1);

 private:
  void finish(pid_t pid, int status, const struct rusage& usage, bool at_deadline);

  std::filesystem::path dir_;
  std::vector<Outcome> outcomes_;
  std::vector<std::filesystem::path> logs_;
  std::vector<std::chrono::steady_clock::time_point> starts_;
  std::map<pid_t, size_t> running_;
};

// Starts `world` ranks of `program` in `group` (or only the ranks in `which`, in that order), each as
// `program args...` with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, one
// free MASTER_PORT and OMP_NUM_THREADS=1 set, plus `extra_env` (which may override them).
void start_ranks(ProcessGroup& group, const std::filesystem::path& program, int world,
                 const std::vector<std::string>& args, const std::map<std::string, std::string>& extra_env = {},
                 std::vector<int> which = {});

// start_ranks in a group of its own, then waits for the ranks until `deadline_seconds`, kills the
// rest, and returns each one's outcome in the order started.
std::vector<Outcome> run_ranks(const std::filesystem::path& program, int world, const std::vector<std::string>& args,
                               double deadline_seconds, const std::map<std::string, std::string>& extra_env = {},
                               std::vector<int> which = {});

// Every outcome with its output, for failure messages.
std::string describe(const std::vector<Outcome>& outcomes);

// `output` from the first occurrence of `text` to the end of that line (without the newline), or "".
std::string line_from(const std::string& output, const std::string& text);

}  // namespace diffuse::test
