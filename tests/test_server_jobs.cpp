// diffuse-server's async jobs and its promises under load, with the real program and a real client:
// a job reports its queue position and progress and ends with the images (also as server-sent
// events); DELETE cancels it at the next step; 50 concurrent requests against a queue of 8 are all
// answered (images or 429) and none is lost, and memory returns to its level; a client that leaves
// mid-job leaves nothing behind.

#include <algorithm>
#include <atomic>
#include <set>
#include <mutex>

#include "support/server_process.hpp"

using namespace diffuse;
namespace fs = std::filesystem;
using nlohmann::json;
using test::get;
using test::post;

namespace {

fs::path tiny_flux() { return *test::fixtures_dir() / "tiny-flux" / "pipeline"; }

// Polls the job until `done(job)` or 60 s pass; returns the last state seen.
template <typename Done>
json poll(const test::ServerProcess& server, const std::string& id, Done done) {
  json job;
  for (int i = 0; i < 3000; ++i) {
    job = get(server, "/v1/jobs/" + id);
    if (done(job)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return job;
}

}  // namespace

TEST(ServerJobs, JobReportsQueuePositionProgressAndImages) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", tiny_flux().string(), "--max-steps", "10000"});
  ASSERT_TRUE(server.ready());
  // A long job ahead makes the next one wait at position 1.
  const auto blocker = post(server, "/v1/jobs", {{"prompt", "a"}, {"size", "32x32"}, {"steps", 10000}});
  ASSERT_TRUE(blocker && blocker->status == 202);
  const std::string blocker_id = test::json_of(blocker)["id"];
  const json request = {{"prompt", "a photo of a dog with cat-like look"}, {"size", "96x64"}, {"steps", 50}, {"seed", 5}};
  const auto accepted = post(server, "/v1/jobs", request);
  ASSERT_TRUE(accepted && accepted->status == 202) << (accepted ? accepted->body : "");
  const json job = test::json_of(accepted);
  EXPECT_EQ(accepted->get_header_value("Location"), "/v1/jobs/" + job["id"].get<std::string>());
  EXPECT_EQ(job["state"], "queued");
  EXPECT_EQ(get(server, "/v1/jobs/" + job["id"].get<std::string>())["queue_position"], 1);

  // The blocker, once running, is cancelled; then ours runs and its steps are seen to grow.
  poll(server, blocker_id, [](const json& j) { return j["state"] == "running" && j["step"] > 0; });
  ASSERT_EQ(server.client()->Delete(("/v1/jobs/" + blocker_id).c_str())->status, 200);
  std::set<int64_t> steps_seen;
  const json done = poll(server, job["id"], [&](const json& j) {
    if (j["state"] == "running") steps_seen.insert(j["step"].get<int64_t>());
    return j["state"] == "succeeded" || j["state"] == "failed";
  });
  ASSERT_EQ(done["state"], "succeeded") << done.dump().substr(0, 500);
  EXPECT_EQ(done["step"], 50);
  EXPECT_EQ(done["total_steps"], 50);
  EXPECT_EQ(done["queue_position"], 0);
  ASSERT_EQ(done["images"].size(), 1u);
  EXPECT_GE(steps_seen.size(), 2u) << "progress was not seen between the steps";
  const json blocker_final = get(server, "/v1/jobs/" + blocker_id);
  EXPECT_EQ(blocker_final["state"], "cancelled");
  EXPECT_LT(blocker_final["step"], 10000);
  // The same request made synchronously gives the same image.
  const auto sync = post(server, "/v1/images/generations", request);
  ASSERT_TRUE(sync && sync->status == 200);
  EXPECT_EQ(test::json_of(sync)["data"][0]["b64_json"], done["images"][0]);
  // Cancelling a finished job is a conflict; an unknown one is 404.
  EXPECT_EQ(server.client()->Delete(("/v1/jobs/" + job["id"].get<std::string>()).c_str())->status, 409);
  EXPECT_EQ(server.client()->Get("/v1/jobs/00000000")->status, 404);
}

TEST(ServerJobs, EventsStreamProgressThenDone) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", tiny_flux().string()});
  ASSERT_TRUE(server.ready());
  const auto accepted = post(server, "/v1/jobs", {{"prompt", "a"}, {"size", "64x64"}, {"steps", 60}, {"seed", 1}});
  ASSERT_TRUE(accepted && accepted->status == 202);
  const std::string id = test::json_of(accepted)["id"];
  std::string stream;
  const auto res = server.client()->Get(("/v1/jobs/" + id + "/events").c_str(), [&](const char* data, size_t n) {
    stream.append(data, n);
    return true;
  });
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  // Events: "event: progress" with growing steps, then one "event: done" with the images.
  std::vector<json> events;
  std::vector<std::string> names;
  for (size_t at = 0; (at = stream.find("event: ", at)) != std::string::npos;) {
    const size_t eol = stream.find('\n', at);
    names.push_back(stream.substr(at + 7, eol - at - 7));
    const size_t data = stream.find("data: ", eol);
    const size_t end = stream.find("\n\n", data);
    events.push_back(json::parse(stream.substr(data + 6, end - data - 6)));
    at = end;
  }
  ASSERT_GE(events.size(), 2u) << stream.substr(0, 1000);
  EXPECT_EQ(names.back(), "done");
  EXPECT_EQ(events.back()["state"], "succeeded");
  EXPECT_EQ(events.back()["images"].size(), 1u);
  int64_t last = -1;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    EXPECT_EQ(names[i], "progress");
    EXPECT_GE(events[i]["step"].get<int64_t>(), last);
    last = events[i]["step"];
  }
  EXPECT_TRUE(std::any_of(events.begin(), events.end(), [](const json& e) { return e["step"] > 0 && e["step"] < 60; }))
      << "no event in the middle of the steps";
}

TEST(ServerJobs, FiftyConcurrentRequestsAgainstAQueueOfEightAreAllAnswered) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", tiny_flux().string(), "--queue", "8"});
  ASSERT_TRUE(server.ready());
  const json request = {{"prompt", "a"}, {"size", "32x32"}, {"steps", 3}, {"seed", 2}};
  const auto warm = post(server, "/v1/images/generations", request);  // the first call's allocations
  ASSERT_TRUE(warm && warm->status == 200);
  const int64_t rss_before = get(server, "/health")["resident_bytes"];

  std::atomic<int> images{0}, refused{0}, other{0};
  std::mutex mutex;
  std::vector<std::string> others;
  std::vector<std::thread> clients;
  for (int i = 0; i < 50; ++i)
    clients.emplace_back([&] {
      const auto res = post(server, "/v1/images/generations", request);
      if (res && res->status == 200 && test::json_of(res)["data"].size() == 1) {
        ++images;
      } else if (res && res->status == 429 && !res->get_header_value("Retry-After").empty()) {
        ++refused;
      } else {
        ++other;
        std::lock_guard<std::mutex> lock(mutex);
        others.push_back(res ? std::to_string(res->status) + " " + res->body.substr(0, 200) : httplib::to_string(res.error()));
      }
    });
  for (auto& client : clients) client.join();
  std::cout << "[ measured ] 50 concurrent requests, queue 8: " << images << " images, " << refused << " refused (429)\n";
  EXPECT_EQ(other, 0) << (others.empty() ? "" : others.front());
  EXPECT_EQ(images + refused, 50);
  EXPECT_GE(images, 8);  // at least the queue's worth
  const json health = get(server, "/health");
  EXPECT_EQ(health["accepted"], images + 1);  // + the warm-up
  EXPECT_EQ(health["succeeded"], images + 1);
  EXPECT_EQ(health["rejected"], refused.load());
  EXPECT_EQ(health["jobs"], 0) << "sync jobs stay behind";
  EXPECT_EQ(health["queued"], 0);
  EXPECT_EQ(health["running"], 0);
  const int64_t rss_after = health["resident_bytes"];
  std::cout << "[ measured ] resident memory: " << rss_before / 1048576.0 << " MiB before, " << rss_after / 1048576.0
            << " MiB after\n";
  // Back near its level: the allocator keeps some pages, but nothing grows with the requests.
  EXPECT_LT(rss_after, rss_before + 64 * 1048576);
}

TEST(ServerJobs, ClientsThatLeaveMidJobLeaveNothingBehind) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", tiny_flux().string(), "--max-steps", "10000"});
  ASSERT_TRUE(server.ready());
  // A long job ahead holds the others in the queue while their clients leave.
  const auto blocker = post(server, "/v1/jobs", {{"prompt", "a"}, {"size", "32x32"}, {"steps", 10000}});
  ASSERT_TRUE(blocker && blocker->status == 202);
  const std::string blocker_id = test::json_of(blocker)["id"];
  poll(server, blocker_id, [](const json& j) { return j["state"] == "running"; });
  // A sync client that gives up after 0.3 s, its job still waiting: the job stays accepted.
  {
    auto impatient = server.client(0.3);
    const auto res = impatient->Post("/v1/images/generations",
                                     json({{"prompt", "a"}, {"size", "32x32"}, {"steps", 4}}).dump(), "application/json");
    EXPECT_FALSE(res) << "expected the client to time out";
  }
  // An events stream that leaves after its first event.
  const auto accepted = post(server, "/v1/jobs", {{"prompt", "a"}, {"size", "32x32"}, {"steps", 20}});
  ASSERT_TRUE(accepted && accepted->status == 202);
  const std::string id = test::json_of(accepted)["id"];
  int chunks = 0;
  server.client()->Get(("/v1/jobs/" + id + "/events").c_str(), [&](const char*, size_t) { return ++chunks < 1; });
  EXPECT_EQ(chunks, 1);
  EXPECT_EQ(get(server, "/health")["queued"], 2);

  // Both abandoned jobs run once the blocker is cancelled, and end: the async one stays readable, the
  // sync one is forgotten once done.
  ASSERT_EQ(server.client()->Delete(("/v1/jobs/" + blocker_id).c_str())->status, 200);
  EXPECT_EQ(poll(server, id, [](const json& j) { return j["state"] == "succeeded"; })["state"], "succeeded");
  json health;
  for (int i = 0; i < 3000; ++i) {
    health = get(server, "/health");
    if (health["running"] == 0 && health["queued"] == 0 && health["succeeded"] == 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(health["running"], 0);
  EXPECT_EQ(health["queued"], 0);
  EXPECT_EQ(health["succeeded"], 2) << health.dump();
  EXPECT_EQ(health["cancelled"], 1) << health.dump();
  EXPECT_EQ(health["jobs"], 2) << "only the async jobs stay (for GET): " << health.dump();
  // The server goes on serving.
  const auto next = post(server, "/v1/images/generations", {{"prompt", "a"}, {"size", "32x32"}, {"steps", 2}});
  EXPECT_TRUE(next && next->status == 200);
}
