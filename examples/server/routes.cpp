#include "server/routes.hpp"

#include <unistd.h>

#include <chrono>
#include <fstream>

#include "server/api_error.hpp"
#include "server/responses.hpp"
#include "server/web_page.hpp"

namespace diffuse::server {
namespace {

using nlohmann::json;

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void send_error(httplib::Response& res, const ApiError& error, const JobQueue* queue) {
  if (error.status() == 429 && queue != nullptr)
    res.set_header("Retry-After", std::to_string(queue->retry_after_seconds()));
  if (error.status() == 401) res.set_header("WWW-Authenticate", "Bearer");
  send_json(res, error.status(), error.body());
}

// Compares without an early exit, so the time taken does not tell how much of a guess was right.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char differ = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) differ |= static_cast<unsigned char>((i < a.size() ? a[i] : 0) ^ b[i]);
  return differ == 0;
}

// A generation that the client waits for: the job is pinned until answered, then forgotten.
template <typename Parse, typename Answer>
void generate_and_wait(ServerContext& context, const httplib::Request& req, httplib::Response& res, Parse parse,
                       Answer answer) {
  std::vector<std::string> ignored;
  const GenerationParams params = parse(parse_body(req.body), context.limits, &ignored);
  const JobSnapshot accepted = context.queue->submit(params, /*pinned=*/true);
  std::optional<JobSnapshot> done = context.queue->wait_until_done(accepted.id);
  context.queue->forget(accepted.id);
  if (!done) throw ApiError(500, "", "the job was lost");  // not expected: pinned jobs are not reaped
  if (done->state == JobState::Succeeded) return send_json(res, 200, answer(*done, ignored));
  if (done->state == JobState::Cancelled) throw ApiError(503, "", "the job was cancelled: " + done->error);
  throw ApiError(500, "", "the job failed: " + done->error);
}

// This process's resident memory (Linux), for /health: a leak shows as growth across requests.
int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return -1;
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace

void add_routes(httplib::Server& http, ServerContext& context) {
  JobQueue& queue = *context.queue;

  // Authentication first, before any route reads the body.
  http.set_pre_routing_handler([&context](const httplib::Request& req, httplib::Response& res) {
    if (context.api_key.empty() || req.path == "/health" || req.path == "/") return httplib::Server::HandlerResponse::Unhandled;
    const std::string header = req.get_header_value("Authorization");
    if (!same_secret(header, "Bearer " + context.api_key)) {
      send_error(res, ApiError(401, "Authorization", "this server wants the header 'Authorization: Bearer KEY'"), nullptr);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Errors that httplib answers itself (unknown path, body over the limit) get a JSON body too.
  http.set_error_handler(httplib::Server::HandlerWithResponse([&context](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string message = "HTTP " + std::to_string(res.status);
    std::string field;
    if (res.status == 404) message = "no endpoint " + req.method + " " + req.path;
    if (res.status == 413) {
      message = "the body is over the limit of " + std::to_string(context.max_body_bytes) + " bytes";
      field = "body";
    }
    send_json(res, res.status, ApiError(res.status, field, message).body());
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([&queue](const httplib::Request&, httplib::Response& res, std::exception_ptr error) {
    try {
      std::rethrow_exception(error);
    } catch (const ApiError& e) {
      send_error(res, e, &queue);
    } catch (const std::exception& e) {
      send_error(res, ApiError(500, "", e.what()), &queue);
    } catch (...) {
      send_error(res, ApiError(500, "", "unknown error"), &queue);
    }
  });

  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(web_page_html(), "text/html; charset=utf-8");
  });
  http.Get("/health", [&context, &queue](const httplib::Request&, httplib::Response& res) {
    const QueueCounts c = queue.counts();
    send_json(res, 200,
              {{"status", context.stopping ? "stopping" : "ok"}, {"queued", c.queued}, {"running", c.running},
               {"jobs", c.retained}, {"workers", c.workers}, {"accepted", c.accepted}, {"rejected", c.rejected},
               {"succeeded", c.succeeded}, {"failed", c.failed}, {"cancelled", c.cancelled},
               {"resident_bytes", resident_bytes()}});
  });
  http.Get("/v1/models", [&context](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"object", "list"}, {"data", json::array({context.model})}});
  });

  http.Post("/v1/images/generations", [&context](const httplib::Request& req, httplib::Response& res) {
    generate_and_wait(context, req, res, parse_openai_request, openai_response);
  });
  http.Post("/sdapi/v1/txt2img", [&context](const httplib::Request& req, httplib::Response& res) {
    generate_and_wait(context, req, res, parse_txt2img_request, txt2img_response);
  });

  http.Post("/v1/jobs", [&context, &queue](const httplib::Request& req, httplib::Response& res) {
    std::vector<std::string> ignored;
    const GenerationParams params = parse_openai_request(parse_body(req.body), context.limits, &ignored);
    const JobSnapshot job = queue.submit(params);
    json body = job_json(job, false);
    if (!ignored.empty()) body["ignored_fields"] = ignored;
    res.set_header("Location", "/v1/jobs/" + job.id);
    send_json(res, 202, body);
  });
  http.Get(R"(/v1/jobs/([0-9a-f]+))", [&queue](const httplib::Request& req, httplib::Response& res) {
    const auto job = queue.get(req.matches[1].str());
    if (!job) throw ApiError(404, "id", "no job " + req.matches[1].str() + " (unknown, or finished and forgotten)");
    send_json(res, 200, job_json(*job, true));
  });
  http.Delete(R"(/v1/jobs/([0-9a-f]+))", [&queue](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1].str();
    const auto before = queue.get(id, false);
    if (!before) throw ApiError(404, "id", "no job " + id + " (unknown, or finished and forgotten)");
    if (!queue.cancel(id)) throw ApiError(409, "id", std::string("job ") + id + " has already " + to_string(before->state));
    send_json(res, 200, job_json(*queue.get(id, false), false));
  });
  http.Get(R"(/v1/jobs/([0-9a-f]+)/events)", [&queue](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1].str();
    if (!queue.get(id, false)) throw ApiError(404, "id", "no job " + id + " (unknown, or finished and forgotten)");
    res.set_header("Cache-Control", "no-cache");
    auto seen = std::make_shared<uint64_t>(0);
    // Each call waits for the job's next change (or 15 s, then a comment keeps proxies from closing the
    // stream); the last event is "done" with the job's final state and images. A client that leaves
    // makes the write fail, which ends the stream; the job itself goes on.
    res.set_chunked_content_provider("text/event-stream", [&queue, id, seen](size_t, httplib::DataSink& sink) {
      const auto job = queue.wait_for_change(id, *seen, std::chrono::seconds(15), false);
      if (!job) {
        sink.done();
        return true;
      }
      if (job->version == *seen && !is_final(job->state)) return sink.write(": waiting\n\n", 11);
      *seen = job->version;
      const bool done = is_final(job->state);
      const std::string event = std::string("event: ") + (done ? "done" : "progress") + "\ndata: " +
                                job_json(done ? queue.get(id, true).value_or(*job) : *job, done).dump() + "\n\n";
      if (!sink.write(event.data(), event.size())) return false;
      if (done) sink.done();
      return true;
    });
  });
}

}  // namespace diffuse::server
