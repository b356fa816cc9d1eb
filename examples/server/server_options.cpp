#include "server/server_options.hpp"

#include <cstdlib>
#include <sstream>

namespace diffuse::server {

ServerOptions parse_server_options(int argc, char** argv) {
  ServerOptions o;
  CLI::App app(
      "Serves a pipeline folder in diffusers' format (FLUX.1, Stable Diffusion, Qwen-Image) over HTTP: the\n"
      "models load once, requests queue and run one at a time per pipeline. Endpoints: OpenAI's\n"
      "POST /v1/images/generations, AUTOMATIC1111's POST /sdapi/v1/txt2img, async jobs under /v1/jobs\n"
      "(progress as server-sent events, cancel with DELETE), GET /health, GET /v1/models, and a web page\n"
      "at /. Several GPUs: --devices (one pipeline each, data parallel), or under diffuse-launch/torchrun\n"
      "with --cfg-degree/--ring-degree/--ulysses-degree (every rank runs each job together; rank 0 serves).\n"
      "docs/server.md has the details and curl examples.",
      "diffuse-server");
  cli::init(app, "diffuse-server --model DIR [--host 127.0.0.1] [--port 8080] [--api-key KEY] [options]");
  cli::add_model_options(app, o.model);
  app.get_option("--device")->description(
      "where the pipeline runs; under a launcher, when not given: the process's own device\n(cuda:LOCAL_RANK, or cpu)");
  std::string devices;
  app.option_defaults()->group("Model");
  cli::add_text(app, "--devices", devices, "LIST",
                "one pipeline per device, jobs to the next free one (e.g. cuda:0,cuda:1 or cpu,cpu);\n"
                "replaces --device",
                [](const std::string& text) {
                  if (text.empty() || text.front() == ',' || text.back() == ',' || text.find(",,") != std::string::npos)
                    throw cli::invalid_value("--devices expects DEVICE[,DEVICE...], got '" + text + "'");
                });
  app.option_defaults()->group("HTTP");
  cli::add_text(app, "--host", o.host, "ADDRESS",
                "the address to listen on; 0.0.0.0 opens the server to the network (see\ndocs/server.md's security notes)");
  cli::add_int(app, "--port", o.port, "the TCP port; 0 takes a free one (printed)", {.min = 0, .max = 65535});
  cli::add_text(app, "--api-key", o.api_key, "KEY",
                "require 'Authorization: Bearer KEY' on every endpoint but /health and the page\n"
                "(default: $DIFFUSE_SERVER_API_KEY, which keeps the key out of the process list)");
  cli::add_int(app, "--http-threads", o.http_threads, "connections served at once; 0: queue + workers + 32",
               {.min = 0, .max = 4096});
  cli::add_int(app, "--max-body-bytes", o.max_body_bytes, "request bodies above this are refused (413)",
               {.min = 64, .max = int64_t(1) << 30});
  app.option_defaults()->group("Jobs");
  cli::add_int(app, "--queue", o.queue, "jobs waiting at most; more are refused with 429 and Retry-After",
               {.min = 0, .max = 100000});
  cli::add_int(app, "--max-size", o.max_size, "width and height at most", {.min = 8, .max = 16384});
  cli::add_int(app, "--max-steps", o.max_steps, "denoising steps at most", {.min = 1, .max = 10000});
  cli::add_int(app, "--max-images", o.max_images, "images per request at most (n, batch_size)", {.min = 1, .max = 64});
  cli::add_float(app, "--job-retention", o.job_retention, "seconds a finished async job stays readable",
                 {.min = 0, .max = 1e7})->type_name("SECONDS");
  cli::add_float(app, "--stop-grace", o.stop_grace,
                 "after SIGTERM, seconds running jobs get to finish before they are cancelled", {.min = 0, .max = 1e6})
      ->type_name("SECONDS");
  app.option_defaults()->group("Parallelism");
  cli::add_int(app, "--cfg-degree", o.cfg_degree,
               "CFG parallelism: 2 puts classifier-free guidance's two passes on two halves of the\n"
               "ranks (SD, Qwen-Image with a negative prompt; under a launcher)",
               {.min = 1, .max = 2});
  cli::add_int(app, "--ring-degree", o.ring_degree, "context parallelism: ranks in the ring (under a launcher)",
               {.min = 1, .max = 65536});
  cli::add_int(app, "--ulysses-degree", o.ulysses_degree,
               "context parallelism: ranks in each Ulysses group (under a launcher)", {.min = 1, .max = 65536});
  app.option_defaults()->group("Options");
  cli::add_quiet_option(app, o.quiet);
  app.footer(
      "Environment: DIFFUSE_SERVER_API_KEY (the key, when --api-key is not given); under a launcher RANK,\n"
      "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, DIFFUSE_DIST_TIMEOUT. SIGTERM or SIGINT stops it:\n"
      "no new jobs, the waiting ones cancelled, the running ones finished (within --stop-grace).");
  app.get_option("--model")->required();
  cli::parse(app, argc, argv);
  o.device_given = app.get_option("--device")->count() > 0;
  std::stringstream items(devices);
  for (std::string item; std::getline(items, item, ',');) o.devices.push_back(item);
  if (!o.devices.empty() && o.device_given) cli::usage_error(app, "--devices replaces --device; give one of them");
  if (!o.devices.empty() && o.cfg_degree * o.ring_degree * o.ulysses_degree > 1)
    cli::usage_error(app, "--devices and parallelism over ranks (--cfg-degree/--ring-degree/--ulysses-degree) do not mix");
  if (o.api_key.empty())
    if (const char* key = std::getenv("DIFFUSE_SERVER_API_KEY")) o.api_key = key;
  return o;
}

}  // namespace diffuse::server
