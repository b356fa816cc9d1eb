#pragma once
// diffuse-server started as a user starts it, for the server's tests: the real program on a free port
// of 127.0.0.1 (it takes one with --port 0 and prints it), a real HTTP client (cpp-httplib's), and the
// generate program to compare images with. The process runs under a deadline and is killed when the
// test ends, so a test never hangs and never leaves a server behind.
//
//   test::ServerProcess server({"--model", folder, "--queue", "2"});
//   auto res = server.client().Post("/v1/images/generations", body, "application/json");
//   server.stop(SIGTERM);   // its exit code and output

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support/multi_process.hpp"
#include "support/test_support.hpp"

namespace diffuse::test {

inline std::filesystem::path server_program() {
  return std::filesystem::path(DIFFUSE_EXAMPLES_BINARY_DIR) / "diffuse-server";
}

class ServerProcess {
 public:
  // Starts diffuse-server with `args` (and --port 0 --quiet), and waits until it listens (fails the test
  // with its output when it does not within `start_seconds`). With `world` > 1, that many ranks as a
  // launcher starts them (RANK, WORLD_SIZE, ... on a free MASTER_PORT); rank 0 serves.
  explicit ServerProcess(std::vector<std::string> args, const std::map<std::string, std::string>& env = {},
                         double start_seconds = 120, int world = 1) {
    std::vector<std::string> argv = {"--port", "0", "--quiet"};
    argv.insert(argv.end(), args.begin(), args.end());
    if (world > 1) {
      start_ranks(group_, server_program(), world, argv, env);
    } else {
      argv.insert(argv.begin(), server_program().string());
      index_ = group_.start(argv, env);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(start_seconds);
    const std::string marker = "listening on http://127.0.0.1:";
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string out = group_.output(index_);
      const auto at = out.find(marker);
      if (at != std::string::npos && out.find('\n', at) != std::string::npos) {
        port_ = std::stoi(out.substr(at + marker.size()));
        return;
      }
      // Its one-line failure ("diffuse-server: cannot ...") and no listening line: it has exited.
      if (out.find("diffuse-server: ") != std::string::npos && at == std::string::npos && out.back() == '\n') break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "diffuse-server did not start:\n" << group_.output(index_);
  }

  bool ready() const { return port_ > 0; }
  int port() const { return port_; }
  std::string output() const { return group_.output(index_); }

  // A client of this server: generous read timeout (a job's wait), short connect timeout.
  std::unique_ptr<httplib::Client> client(double read_seconds = 120) const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port_);
    c->set_connection_timeout(5);
    c->set_read_timeout(std::chrono::duration<double>(read_seconds));
    return c;
  }

  // Sends `signal` (to rank 0) and waits (up to `seconds`) for the exit of every process.
  std::vector<Outcome> stop_all(int signal = SIGTERM, double seconds = 60) {
    group_.signal(index_, signal);
    return group_.wait(std::chrono::duration<double>(seconds));
  }
  Outcome stop(int signal = SIGTERM, double seconds = 60) { return stop_all(signal, seconds).at(index_); }

 private:
  ProcessGroup group_;
  size_t index_ = 0;
  int port_ = 0;
};

// A JSON body POSTed to the server (with extra headers, e.g. Authorization).
inline httplib::Result post(const ServerProcess& server, const std::string& path, const nlohmann::json& body,
                            const httplib::Headers& headers = {}) {
  return server.client()->Post(path.c_str(), headers, body.dump(), "application/json");
}

// A JSON body's parse, with the body in the failure message when it is not JSON.
inline nlohmann::json json_of(const httplib::Result& res) {
  if (!res) {
    ADD_FAILURE() << "no answer: " << httplib::to_string(res.error());
    return nullptr;
  }
  try {
    return nlohmann::json::parse(res->body);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not JSON (" << e.what() << "): " << res->body.substr(0, 500);
    return nullptr;
  }
}

// GET `path`, parsed as JSON.
inline nlohmann::json get(const ServerProcess& server, const std::string& path) {
  return json_of(server.client()->Get(path.c_str()));
}

inline std::string base64_decode(const std::string& text) {
  static const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    if (c == '=') break;
    const auto value = alphabet.find(c);
    if (value == std::string::npos) continue;
    bits = (bits << 6) | static_cast<uint32_t>(value);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out += static_cast<char>((bits >> count) & 0xff);
    }
  }
  return out;
}

// A file's bytes.
inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs the generate program with `args` (plus --quiet --output DIR/out.png) and returns the PNGs'
// bytes, one per image ("" entries and a test failure when it fails).
inline std::vector<std::string> generate_pngs(const std::vector<std::string>& args, int images = 1) {
  // One folder per process and call: ctest runs the tests of one program in parallel processes, each
  // counting from 0 (a shared folder once let one test read another's image).
  static int counter = 0;
  const std::filesystem::path dir =
      temporary_folder("server_generate_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  std::vector<std::string> argv = {(std::filesystem::path(DIFFUSE_EXAMPLES_BINARY_DIR) / "generate").string()};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.insert(argv.end(), {"--quiet", "--output", (dir / "out.png").string()});
  ProcessGroup group;
  group.start(argv);
  const Outcome outcome = group.wait(std::chrono::seconds(120)).at(0);
  EXPECT_EQ(outcome.exit_code, 0) << outcome.output;
  std::vector<std::string> out;
  for (int i = 0; i < images; ++i)
    out.push_back(read_bytes(images == 1 ? dir / "out.png" : dir / ("out_" + std::to_string(i) + ".png")));
  return out;
}

}  // namespace diffuse::test
