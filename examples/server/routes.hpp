#pragma once
// The HTTP endpoints (docs/server.md lists them with curl examples):
//   GET  /                          the web page
//   GET  /health                    liveness and queue counts (no API key needed)
//   GET  /v1/models                 the loaded pipeline: family, dtype, devices, sizes
//   POST /v1/images/generations     OpenAI's images API (waits for the images)
//   POST /sdapi/v1/txt2img          AUTOMATIC1111's txt2img (waits for the images)
//   POST /v1/jobs                   a job, answered at once with its id (202)
//   GET  /v1/jobs/{id}              its state, queue position, step/total, images once done
//   DELETE /v1/jobs/{id}            cancels it (at the next step when running)
//   GET  /v1/jobs/{id}/events       its progress as server-sent events
// Every answer is JSON (but the page and the event stream); errors are {"error": {"message", "field",
// "status"}}. With an API key, every endpoint but /health and the page wants "Authorization: Bearer KEY".

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <string>

#include "server/generation_params.hpp"
#include "server/job_queue.hpp"

namespace diffuse::server {

struct ServerContext {
  JobQueue* queue = nullptr;
  RequestLimits limits;
  nlohmann::json model;   // /v1/models' entry for the pipeline
  std::string api_key;    // "" = no authentication
  size_t max_body_bytes = 1 << 20;
  std::atomic<bool> stopping{false};
};

void add_routes(httplib::Server& http, ServerContext& context);

}  // namespace diffuse::server
