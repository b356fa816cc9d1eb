// diffuse-server: a pipeline loaded once, requests served over HTTP (OpenAI's and AUTOMATIC1111's
// image APIs, async jobs with progress, a web page), on one device, one pipeline per device
// (--devices), or context parallel over a launcher's ranks (rank 0 serves).
//
//   diffuse-server --model FLUX.1-dev --dtype bfloat16 --device cuda --port 8080
//   curl -s localhost:8080/v1/images/generations -d '{"prompt": "a cat", "size": "1024x1024", "seed": 1}'
//
// --help lists every option; docs/server.md has the endpoints, the web page and the security notes.

#include <signal.h>
#include <unistd.h>

#include <c10/util/Exception.h>

#include <cerrno>
#include <iostream>
#include <memory>
#include <thread>

#include "diffuse/diffuse.hpp"
#include "diffuse/distributed/distributed.hpp"
#include "server/context_parallel_runner.hpp"
#include "server/job_queue.hpp"
#include "server/pipeline_runner.hpp"
#include "server/routes.hpp"
#include "server/server_options.hpp"

namespace {

using namespace diffuse::server;

// SIGTERM/SIGINT write their number to this pipe (the only async-signal-safe thing to do); serve()'s
// signal thread reads it. A handler, not a blocked mask: libraries start threads before main.
int signal_pipe[2] = {-1, -1};

void on_signal(int signal) {
  const char byte = static_cast<char>(signal);
  [[maybe_unused]] const ssize_t n = write(signal_pipe[1], &byte, 1);
}

void install_signal_handlers() {
  if (pipe(signal_pipe) != 0) throw diffuse::Error("cannot make the signal pipe");
  struct sigaction action = {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that leaves mid-answer is a failed write, not the end of the server
}

// The signal, or 0 when the pipe is closed.
int wait_for_signal() {
  char byte = 0;
  for (;;) {
    const ssize_t n = read(signal_pipe[0], &byte, 1);
    if (n == 1) return byte;
    if (n < 0 && errno == EINTR) continue;
    return 0;
  }
}

std::unique_ptr<PipelineRunner> load_runner(const ServerOptions& o, const std::string& device,
                                            const diffuse::Distributed* dist) {
  diffuse::PipelineOptions options;
  options.dtype = diffuse::parse_dtype(o.model.dtype);
  options.device = device;
  if (dist != nullptr && o.cfg_degree * o.ring_degree * o.ulysses_degree > 1) {
    options.parallel_config = diffuse::ParallelConfig{
        .cfg_degree = o.cfg_degree, .ring_degree = o.ring_degree, .ulysses_degree = o.ulysses_degree};
    options.parallel_world = const_cast<diffuse::Distributed*>(dist)->shared_communicator();
  }
  return std::make_unique<PipelineRunner>(diffuse::load_pipeline(o.model.model, options), device);
}

nlohmann::json model_json(const ServerOptions& o, const diffuse::PipelineInfo& info, const JobQueue& queue) {
  return {{"id", std::filesystem::path(o.model.model).lexically_normal().filename().string().empty()
                     ? o.model.model
                     : std::filesystem::path(o.model.model).lexically_normal().filename().string()},
          {"object", "model"},
          {"owned_by", "diffuse"},
          {"family", info.class_name},
          {"dtype", o.model.dtype},
          {"devices", queue.describe_workers()},
          {"scheduler", info.scheduler},
          {"size_multiple", info.size_multiple},
          {"default_width", info.default_width},
          {"default_height", info.default_height},
          {"default_steps", info.default_steps},
          {"default_guidance_scale", info.default_guidance_scale},
          {"uses_negative_prompt", info.uses_negative_prompt},
          {"true_cfg", info.true_cfg}};
}

int serve(const ServerOptions& o, std::vector<std::unique_ptr<JobRunner>> runners, const diffuse::PipelineInfo& info,
          const diffuse::Scheduler& folder_scheduler) {
  const size_t workers = runners.size();
  JobQueue queue({.capacity = static_cast<size_t>(o.queue), .retention_seconds = o.job_retention},
                 std::move(runners));
  ServerContext context;
  context.queue = &queue;
  context.limits = RequestLimits{.info = info,
                                 .scheduler = &folder_scheduler,
                                 .max_size = o.max_size,
                                 .max_steps = o.max_steps,
                                 .max_images = o.max_images};
  context.model = model_json(o, info, queue);
  context.api_key = o.api_key;
  context.max_body_bytes = static_cast<size_t>(o.max_body_bytes);

  httplib::Server http;
  const size_t threads = o.http_threads > 0 ? static_cast<size_t>(o.http_threads) : o.queue + workers + 32;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(context.max_body_bytes);
  add_routes(http, context);

  int port = static_cast<int>(o.port);
  if (port == 0) port = http.bind_to_any_port(o.host);
  else if (!http.bind_to_port(o.host, port)) port = -1;
  if (port < 0) {
    std::cerr << "diffuse-server: cannot listen on " << o.host << ":" << o.port << "\n";
    queue.shutdown(std::chrono::seconds(0));
    return 1;
  }
  std::cout << "diffuse-server: " << info.class_name << " on " << workers << " worker(s), listening on http://"
            << o.host << ":" << port << std::endl;

  // SIGTERM/SIGINT arrive here: no new jobs, the queue drains (the waiting cancelled, the running
  // finished within the grace), then the listener stops.
  std::thread signals([&] {
    const int signal = wait_for_signal();
    std::cerr << "diffuse-server: " << (signal == SIGTERM ? "SIGTERM" : "SIGINT") << ": stopping\n";
    context.stopping = true;
    queue.shutdown(std::chrono::duration<double>(o.stop_grace));
    http.stop();
  });
  const bool listened = http.listen_after_bind();
  if (!context.stopping) {
    std::cerr << "diffuse-server: the listener failed\n";
    signals.detach();
    queue.shutdown(std::chrono::seconds(0));
    return 1;
  }
  signals.join();
  (void)listened;
  const QueueCounts c = queue.counts();
  std::cerr << "diffuse-server: stopped (" << c.succeeded << " jobs succeeded, " << c.failed << " failed, "
            << c.cancelled << " cancelled, " << c.rejected << " refused)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const ServerOptions o = parse_server_options(argc, argv);
  try {
    install_signal_handlers();
    if (o.quiet) diffuse::set_log_level("warn");
    // Parallelism over the launcher's ranks (cfg x ring x Ulysses): rank 0 serves, every rank computes.
    const bool over_ranks = o.cfg_degree * o.ring_degree * o.ulysses_degree > 1;
    if (over_ranks) {
      diffuse::DistributedOptions dist_options;
      if (o.device_given) dist_options.device = o.model.device;
      diffuse::Distributed dist = diffuse::Distributed::init(dist_options);
      std::unique_ptr<PipelineRunner> runner = load_runner(o, dist.device().str(), &dist);
      if (dist.rank() != 0) {
        follow_jobs(*runner, *dist.shared_communicator());
        return 0;
      }
      const diffuse::PipelineInfo info = runner->pipeline().info();
      const diffuse::Scheduler& scheduler = runner->folder_scheduler();
      std::vector<std::unique_ptr<JobRunner>> runners;
      const diffuse::ParallelConfig config{
          .cfg_degree = o.cfg_degree, .ring_degree = o.ring_degree, .ulysses_degree = o.ulysses_degree};
      runners.push_back(
          std::make_unique<ContextParallelLeader>(std::move(runner), dist.shared_communicator(), config.describe()));
      return serve(o, std::move(runners), info, scheduler);
    }
    const std::vector<std::string> devices = o.devices.empty() ? std::vector<std::string>{o.model.device} : o.devices;
    std::vector<std::unique_ptr<JobRunner>> runners;
    std::unique_ptr<diffuse::Scheduler> scheduler;
    diffuse::PipelineInfo info;
    for (const std::string& device : devices) {
      std::unique_ptr<PipelineRunner> runner = load_runner(o, device, nullptr);
      if (!scheduler) {
        info = runner->pipeline().info();
        scheduler = runner->folder_scheduler().clone();
      }
      runners.push_back(std::move(runner));
    }
    return serve(o, std::move(runners), info, *scheduler);
  } catch (const diffuse::Error& e) {
    std::cerr << "diffuse-server: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "diffuse-server: " << e.what_without_backtrace() << "\n";
    return 1;
  }
}
