// diffuse-launch: starts N processes of a program on this machine, as torchrun does.
//
//   diffuse-launch --nproc-per-node 2 ./data_parallel --model DIR --prompt "a cat" --prompt "a dog"
//
// --help lists the options.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "cli/cli.hpp"

namespace {

namespace cli = diffuse::cli;

struct Arguments {
  int64_t nproc = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 0;  // 0: a free one
  double grace = 5;
  bool no_prefix = false;
  std::vector<std::string> program;  // PROGRAM ARGS..., passed through untouched
};

Arguments parse(int argc, char** argv) {
  Arguments a;
  CLI::App app(
      "Starts N processes of PROGRAM on this machine, each with torchrun's variables set: RANK and LOCAL_RANK\n"
      "(0 .. N-1), WORLD_SIZE and LOCAL_WORLD_SIZE (N), MASTER_ADDR and MASTER_PORT (where rank 0 hosts the\n"
      "store that the ranks meet through; diffuse::Distributed::init() reads them all). Each line that a\n"
      "process prints comes out prefixed with \"[rank R] \". When a process fails (non-zero exit or a signal),\n"
      "the others are stopped (SIGTERM, then SIGKILL after --grace seconds) and diffuse-launch exits with\n"
      "the failed rank's code, naming it. `torchrun --no-python --nproc-per-node N PROGRAM ARGS...` works\n"
      "the same way. Everything from PROGRAM on is PROGRAM's own command line.",
      "diffuse-launch");
  cli::init(app, "diffuse-launch --nproc-per-node N [options] PROGRAM [ARGS...]");
  cli::add_int(app, "--nproc-per-node,--nproc_per_node", a.nproc, "processes to start, usually one per GPU",
               {.min = 1, .max = 1024})
      ->required();
  cli::add_text(app, "--master-addr,--master_addr", a.master_addr, "ADDR", "address of rank 0's store");
  cli::add_int(app, "--master-port,--master_port", a.master_port, "its port; 0 picks a free one",
               {.min = 0, .max = 65535});
  cli::add_float(app, "--grace", a.grace, "how long stopped processes get before SIGKILL", {.min = 0})
      ->type_name("SECONDS");
  cli::add_flag(app, "--no-prefix", a.no_prefix, "pass the output through without rank prefixes");
  app.footer(
      "OMP_NUM_THREADS is set to 1 for each process unless it is set already (as torchrun does), so that N\n"
      "processes do not each start one thread per core.");
  // Parsing stops at the first argument that is not one of the options above (or after "--"): PROGRAM.
  app.prefix_command();
  cli::parse(app, argc, argv);
  a.program = app.remaining();
  const bool marked = !a.program.empty() && a.program.front() == "--";  // "--" then PROGRAM
  if (marked) a.program.erase(a.program.begin());
  if (a.program.empty()) cli::usage_error(app, "no program to start");
  // Without "--", an unknown option before PROGRAM is a mistake, not a program called "--bogus".
  if (!marked && a.program.front().size() > 1 && a.program.front()[0] == '-')
    cli::usage_error(app, "unknown option '" + a.program.front() + "'");
  return a;
}

// Failures before any process starts (no free port, no pipe): one line, exit code 2.
[[noreturn]] void fail(const std::string& message) {
  std::cerr << "diffuse-launch: " << message << "\n";
  std::exit(2);
}

// A port that nothing listens on now: bind to port 0, read what the system chose, release it.
int free_port(const std::string& addr) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;
  if (inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1) sa.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t length = sizeof sa;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &length) != 0)
    fail(std::string("cannot find a free port: ") + std::strerror(errno));
  close(fd);
  return ntohs(sa.sin_port);
}

volatile sig_atomic_t g_signal = 0;
void on_signal(int signal) { g_signal = signal; }

struct Child {
  int rank = 0;
  pid_t pid = -1;
  int out = -1, err = -1;  // read ends of its stdout and stderr
  std::string out_buffer, err_buffer;
  bool running = true;
  int status = 0;
};

// Writes complete lines with the rank's prefix; keeps the rest for later.
void emit(std::string& buffer, FILE* stream, const std::string& prefix, bool flush_all) {
  size_t start = 0;
  while (true) {
    const size_t newline = buffer.find('\n', start);
    if (newline == std::string::npos) break;
    std::fputs(prefix.c_str(), stream);
    std::fwrite(buffer.data() + start, 1, newline - start + 1, stream);
    start = newline + 1;
  }
  buffer.erase(0, start);
  if (flush_all && !buffer.empty()) {
    std::fputs(prefix.c_str(), stream);
    std::fwrite(buffer.data(), 1, buffer.size(), stream);
    std::fputc('\n', stream);
    buffer.clear();
  }
  std::fflush(stream);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
                                  strsignal(WTERMSIG(status)) + ")";
  return "ended";
}

}  // namespace

int main(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  const int nproc = static_cast<int>(args.nproc);
  const std::string& master_addr = args.master_addr;
  const int master_port = args.master_port != 0 ? static_cast<int>(args.master_port) : free_port(master_addr);
  const double grace = args.grace;
  const bool prefix = !args.no_prefix;
  std::vector<char*> program;
  for (const std::string& arg : args.program) program.push_back(const_cast<char*>(arg.c_str()));
  program.push_back(nullptr);

  struct sigaction action {};
  action.sa_handler = on_signal;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::vector<Child> children(static_cast<size_t>(nproc));
  for (int rank = 0; rank < nproc; ++rank) {
    Child& child = children[static_cast<size_t>(rank)];
    child.rank = rank;
    int out[2], err[2];
    if (pipe(out) != 0 || pipe(err) != 0) fail(std::string("pipe: ") + std::strerror(errno));
    child.pid = fork();
    if (child.pid < 0) fail(std::string("fork: ") + std::strerror(errno));
    if (child.pid == 0) {
      dup2(out[1], 1);
      dup2(err[1], 2);
      for (int fd : {out[0], out[1], err[0], err[1]}) close(fd);
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      signal(SIGPIPE, SIG_DFL);
      setenv("RANK", std::to_string(rank).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      setenv("GROUP_RANK", "0", 1);
      setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("MASTER_ADDR", master_addr.c_str(), 1);
      setenv("MASTER_PORT", std::to_string(master_port).c_str(), 1);
      setenv("OMP_NUM_THREADS", "1", 0);
      execvp(program[0], program.data());
      std::fprintf(stderr, "cannot start %s: %s\n", program[0], std::strerror(errno));
      _exit(127);
    }
    close(out[1]);
    close(err[1]);
    child.out = out[0];
    child.err = err[0];
  }

  int running = nproc;
  int failed_rank = -1, failed_status = 0;
  bool stopping = false;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  auto stop_all = [&](int signal) {
    for (Child& c : children)
      if (c.running) kill(c.pid, signal);
  };

  auto open_pipes = [&] {
    return std::any_of(children.begin(), children.end(), [](const Child& c) { return c.out >= 0 || c.err >= 0; });
  };
  // After the last exit, output still in the pipes is read for a moment (a grandchild that kept them
  // open must not keep the launcher waiting).
  auto drain_deadline = std::chrono::steady_clock::time_point::max();
  while (running > 0 || (open_pipes() && std::chrono::steady_clock::now() < drain_deadline)) {
    if (running == 0 && drain_deadline == std::chrono::steady_clock::time_point::max())
      drain_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    // Output first.
    std::vector<pollfd> fds;
    std::vector<std::pair<Child*, bool>> owners;  // (child, is stdout)
    for (Child& c : children) {
      if (c.out >= 0) {
        fds.push_back({c.out, POLLIN, 0});
        owners.emplace_back(&c, true);
      }
      if (c.err >= 0) {
        fds.push_back({c.err, POLLIN, 0});
        owners.emplace_back(&c, false);
      }
    }
    if (!fds.empty()) poll(fds.data(), fds.size(), 50);
    else usleep(50000);
    for (size_t k = 0; k < fds.size(); ++k) {
      if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      auto [child, is_out] = owners[k];
      char buffer[65536];
      const ssize_t n = read(fds[k].fd, buffer, sizeof buffer);
      std::string& text = is_out ? child->out_buffer : child->err_buffer;
      const std::string tag = prefix ? "[rank " + std::to_string(child->rank) + "] " : "";
      if (n > 0) {
        text.append(buffer, static_cast<size_t>(n));
        emit(text, is_out ? stdout : stderr, tag, false);
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        emit(text, is_out ? stdout : stderr, tag, true);
        close(fds[k].fd);
        (is_out ? child->out : child->err) = -1;
      }
    }
    // Then the processes.
    int status = 0;
    pid_t pid;
    while (running > 0 && (pid = waitpid(-1, &status, WNOHANG)) > 0) {
      for (Child& c : children) {
        if (c.pid != pid || !c.running) continue;
        c.running = false;
        c.status = status;
        --running;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && failed_rank < 0 && !stopping) {
          failed_rank = c.rank;
          failed_status = status;
          std::fflush(stdout);
          std::fprintf(stderr, "diffuse-launch: rank %d %s; stopping the other %d process%s\n", c.rank,
                       describe_status(status).c_str(), running, running == 1 ? "" : "es");
          stopping = true;
          stop_all(SIGTERM);
          stop_deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(grace));
        }
      }
    }
    if (g_signal != 0 && !stopping) {
      std::fprintf(stderr, "diffuse-launch: got signal %d; stopping all processes\n", static_cast<int>(g_signal));
      stopping = true;
      stop_all(SIGTERM);
      stop_deadline = std::chrono::steady_clock::now() +
                      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(grace));
    }
    if (stopping && running > 0 && std::chrono::steady_clock::now() > stop_deadline) {
      std::fprintf(stderr, "diffuse-launch: %d process%s still running after %.0f s; killing\n", running,
                   running == 1 ? "" : "es", grace);
      stop_all(SIGKILL);
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
  }

  if (failed_rank >= 0) {
    std::fprintf(stderr, "diffuse-launch: rank %d %s\n", failed_rank, describe_status(failed_status).c_str());
    if (WIFEXITED(failed_status)) return WEXITSTATUS(failed_status);
    return 128 + WTERMSIG(failed_status);
  }
  if (g_signal != 0) return 128 + g_signal;
  return 0;
}
