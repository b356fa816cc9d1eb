#include "support/multi_process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "diffuse/error.hpp"
#include "support/test_support.hpp"

extern char** environ;

namespace diffuse::test {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

std::string read_all(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Error(std::string("free_port: socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;  // the kernel picks
  socklen_t length = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    const int err = errno;
    close(fd);
    throw Error(std::string("free_port: ") + std::strerror(err));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

ProcessGroup::ProcessGroup() {
  // One folder per group and process: groups of one test may overlap, and ctest -j runs the tests of
  // one program in parallel processes. The outcomes carry the logs, so the folder goes with the group.
  static int counter = 0;
  dir_ = temporary_folder("processes_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
}

ProcessGroup::~ProcessGroup() {
  for (const auto& [pid, index] : running_) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  std::error_code ignored;
  fs::remove_all(dir_, ignored);
}

size_t ProcessGroup::start(const std::vector<std::string>& argv, const std::map<std::string, std::string>& extra_env) {
  if (argv.empty()) throw Error("ProcessGroup::start: no program");
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const size_t eq = entry.find('=');
    if (eq != std::string::npos) env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"})
    env.erase(name);
  for (const auto& [key, value] : extra_env) env[key] = value;
  std::vector<std::string> env_strings, arg_strings = argv;
  for (const auto& [key, value] : env) env_strings.push_back(key + "=" + value);
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  for (auto& s : arg_strings) args.push_back(s.data());
  args.push_back(nullptr);

  const size_t index = outcomes_.size();
  const fs::path log = dir_ / ("process_" + std::to_string(index) + ".log");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw Error("cannot start " + argv[0] + ": " + std::strerror(rc));
  outcomes_.emplace_back();
  logs_.push_back(log);
  starts_.push_back(Clock::now());
  running_[pid] = index;
  return index;
}

std::string ProcessGroup::output(size_t index) const { return index < logs_.size() ? read_all(logs_[index]) : ""; }

void ProcessGroup::signal(size_t index, int signal) {
  for (const auto& [pid, i] : running_)
    if (i == index) kill(pid, signal);
}

void ProcessGroup::finish(pid_t pid, int status, const struct rusage& usage, bool at_deadline) {
  const size_t index = running_.at(pid);
  running_.erase(pid);
  Outcome& o = outcomes_[index];
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  o.killed_at_deadline = at_deadline;
  o.seconds = std::chrono::duration<double>(Clock::now() - starts_[index]).count();
  o.max_rss_kb = usage.ru_maxrss;
}

std::vector<Outcome> ProcessGroup::wait(std::chrono::duration<double> deadline, int until_exit_of) {
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(deadline);
  auto waiting = [&] {
    if (until_exit_of < 0) return !running_.empty();
    for (const auto& [pid, index] : running_)
      if (static_cast<int>(index) == until_exit_of) return true;
    return false;
  };
  while (waiting()) {
    // Only our own children: another group of the same test may have processes running too.
    bool reaped = false;
    for (auto it = running_.begin(); it != running_.end();) {
      const pid_t pid = it->first;
      ++it;
      int status = 0;
      struct rusage usage {};
      if (wait4(pid, &status, WNOHANG, &usage) == pid) {
        finish(pid, status, usage, false);
        reaped = true;
      }
    }
    if (reaped) continue;
    if (Clock::now() > until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  while (!running_.empty()) {
    const pid_t pid = running_.begin()->first;
    kill(pid, SIGKILL);
    int status = 0;
    struct rusage usage {};
    wait4(pid, &status, 0, &usage);
    finish(pid, status, usage, true);
  }
  for (size_t i = 0; i < outcomes_.size(); ++i) outcomes_[i].output = read_all(logs_[i]);
  return outcomes_;
}

void start_ranks(ProcessGroup& group, const fs::path& program, int world, const std::vector<std::string>& args,
                 const std::map<std::string, std::string>& extra_env, std::vector<int> which) {
  const std::string port = std::to_string(free_port());
  if (which.empty())
    for (int r = 0; r < world; ++r) which.push_back(r);
  for (int r : which) {
    std::vector<std::string> argv = {program.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    std::map<std::string, std::string> env = {
        {"RANK", std::to_string(r)},          {"WORLD_SIZE", std::to_string(world)},
        {"LOCAL_RANK", std::to_string(r)},    {"LOCAL_WORLD_SIZE", std::to_string(world)},
        {"MASTER_ADDR", "127.0.0.1"},         {"MASTER_PORT", port},
        {"OMP_NUM_THREADS", "1"}};
    for (const auto& [key, value] : extra_env) env[key] = value;
    group.start(argv, env);
  }
}

std::vector<Outcome> run_ranks(const fs::path& program, int world, const std::vector<std::string>& args,
                               double deadline_seconds, const std::map<std::string, std::string>& extra_env,
                               std::vector<int> which) {
  ProcessGroup group;
  start_ranks(group, program, world, args, extra_env, std::move(which));
  return group.wait(std::chrono::duration<double>(deadline_seconds));
}

std::string describe(const std::vector<Outcome>& outcomes) {
  std::string out;
  for (size_t i = 0; i < outcomes.size(); ++i)
    out += "--- process " + std::to_string(i) + ": exit " + std::to_string(outcomes[i].exit_code) +
           (outcomes[i].killed_at_deadline ? " (killed at the deadline)" : "") + " after " +
           std::to_string(outcomes[i].seconds) + " s\n" + outcomes[i].output;
  return out;
}

std::string line_from(const std::string& output, const std::string& text) {
  const size_t at = output.find(text);
  if (at == std::string::npos) return "";
  const size_t end = output.find('\n', at);
  return output.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

}  // namespace diffuse::test
