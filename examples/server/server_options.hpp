#pragma once
// diffuse-server's command line, through the shared argument layer (examples/cli): the model options
// every program takes, plus where to listen, who may call, and how much one request may ask for.

#include <cstdint>
#include <string>
#include <vector>

#include "cli/options.hpp"

namespace diffuse::server {

struct ServerOptions {
  cli::ModelOptions model;
  bool device_given = false;         // --device was on the command line
  std::vector<std::string> devices;  // --devices cpu,cpu / cuda:0,cuda:1: one pipeline (and worker) each
  std::string host = "127.0.0.1";
  int64_t port = 8080;               // 0: any free port (the one taken is printed)
  std::string api_key;               // --api-key, else $DIFFUSE_SERVER_API_KEY; "" = none
  int64_t queue = 8;                 // jobs waiting at most
  int64_t max_body_bytes = 1 << 20;
  int64_t max_size = 2048;
  int64_t max_steps = 150;
  int64_t max_images = 4;
  double job_retention = 600;        // seconds finished async jobs stay readable
  double stop_grace = 30;            // seconds running jobs get to finish after SIGTERM
  int64_t http_threads = 0;          // 0: queue + workers + 32
  int64_t cfg_degree = 1;
  int64_t ring_degree = 1;
  int64_t ulysses_degree = 1;
  bool quiet = false;
};

// Parses the command line (exits 0 for --help, 2 for a usage error).
ServerOptions parse_server_options(int argc, char** argv);

}  // namespace diffuse::server
