// diffuse-server, run as a user runs it (the real program on a free port, a real HTTP client): both
// synchronous endpoints answer with the PNG the generate program writes for the same arguments, byte
// for byte; bad input gets 400 naming the field, a body over the limit 413, a missing key 401, a full
// queue 429 with Retry-After; SIGTERM stops it cleanly.

#include "support/server_process.hpp"

using namespace diffuse;
namespace fs = std::filesystem;
using nlohmann::json;
using test::post;

namespace {

fs::path fixture(const std::string& name) { return *test::fixtures_dir() / name / "pipeline"; }

// The error body's field, checked to be a 4xx/5xx JSON error with a message.
std::string error_field(const httplib::Result& res, int status) {
  EXPECT_TRUE(res);
  if (!res) return "(no answer)";
  EXPECT_EQ(res->status, status) << res->body;
  const json body = test::json_of(res);
  if (!body.is_object() || !body.contains("error")) return "(no error in " + res->body + ")";
  EXPECT_FALSE(body["error"]["message"].get<std::string>().empty());
  return body["error"]["field"].is_null() ? "" : body["error"]["field"].get<std::string>();
}

}  // namespace

TEST(Server, OpenAiEndpointAnswersWithGeneratesPng) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", fixture("tiny-flux").string()});
  ASSERT_TRUE(server.ready());
  const auto res = post(server, "/v1/images/generations",
                        {{"prompt", "a photo of a dog with cat-like look"}, {"size", "96x64"}, {"steps", 4},
                         {"guidance", 3.5}, {"seed", 7}, {"n", 2}, {"response_format", "b64_json"}, {"user", "me"}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = test::json_of(res);
  ASSERT_EQ(body["data"].size(), 2u);
  EXPECT_EQ(body["parameters"]["seed"], 7);
  EXPECT_EQ(body["parameters"]["steps"], 4);
  EXPECT_EQ(body["ignored_fields"], json::array({"user"}));
  const auto expected = test::generate_pngs({"--model", fixture("tiny-flux").string(), "--prompt",
                                             "a photo of a dog with cat-like look", "--width", "96", "--height", "64",
                                             "--steps", "4", "--guidance", "3.5", "--seed", "7",
                                             "--num-images-per-prompt", "2"},
                                            2);
  for (size_t i = 0; i < 2; ++i) {
    const std::string png = test::base64_decode(body["data"][i]["b64_json"].get<std::string>());
    EXPECT_EQ(png.substr(1, 3), "PNG");
    EXPECT_TRUE(png == expected[i]) << "image " << i << ": the server's PNG (" << png.size()
                                    << " bytes) differs from generate's (" << expected[i].size() << " bytes)";
  }
  // Without a seed, one is drawn and reported: the same request with it gives the same image.
  const auto random = post(server, "/v1/images/generations", {{"prompt", "a cat"}, {"size", "32x32"}, {"steps", 2}});
  ASSERT_TRUE(random && random->status == 200);
  const json first = test::json_of(random);
  const auto again = post(server, "/v1/images/generations",
                          {{"prompt", "a cat"}, {"size", "32x32"}, {"steps", 2}, {"seed", first["parameters"]["seed"]}});
  ASSERT_TRUE(again && again->status == 200);
  EXPECT_EQ(test::json_of(again)["data"][0]["b64_json"], first["data"][0]["b64_json"]);
}

TEST(Server, Txt2imgAnswersWithGeneratesPngWithTheSamplersScheduler) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", fixture("tiny-sd").string()});
  ASSERT_TRUE(server.ready());
  const auto res = post(server, "/sdapi/v1/txt2img",
                        {{"prompt", "a photo of a dog with cat-like look"}, {"negative_prompt", "blurry, low quality"},
                         {"width", 96}, {"height", 64}, {"steps", 4}, {"cfg_scale", 7.5}, {"seed", 3},
                         {"sampler_name", "Euler a"}, {"batch_size", 1}, {"restore_faces", false}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = test::json_of(res);
  ASSERT_EQ(body["images"].size(), 1u);
  EXPECT_EQ(body["parameters"]["seed"], 3);
  EXPECT_EQ(json::parse(body["info"].get<std::string>())["seed"], 3);
  const std::vector<std::string> args = {"--model", fixture("tiny-sd").string(), "--prompt",
                                         "a photo of a dog with cat-like look", "--negative-prompt",
                                         "blurry, low quality", "--width", "96", "--height", "64", "--steps", "4",
                                         "--guidance", "7.5", "--seed", "3"};
  std::vector<std::string> euler = args;
  euler.insert(euler.end(), {"--scheduler", "EulerAncestralDiscreteScheduler"});
  EXPECT_TRUE(test::base64_decode(body["images"][0].get<std::string>()) == test::generate_pngs(euler)[0])
      << "the server's PNG differs from generate --scheduler EulerAncestralDiscreteScheduler's";
  // The next request without a sampler runs with the folder's scheduler again (PNDM), as generate does.
  json plain = {{"prompt", "a photo of a dog with cat-like look"}, {"negative_prompt", "blurry, low quality"},
                {"width", 96}, {"height", 64}, {"steps", 4}, {"cfg_scale", 7.5}, {"seed", 3}};
  const auto res2 = post(server, "/sdapi/v1/txt2img", plain);
  ASSERT_TRUE(res2 && res2->status == 200);
  EXPECT_TRUE(test::base64_decode(test::json_of(res2)["images"][0].get<std::string>()) == test::generate_pngs(args)[0])
      << "the server's PNG differs from generate's with the folder's scheduler";
}

TEST(Server, QwenImageTrueCfgAnswersWithGeneratesPng) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", fixture("tiny-qwenimage").string()});
  ASSERT_TRUE(server.ready());
  const auto res = post(server, "/v1/images/generations",
                        {{"prompt", "a photo of a dog with cat-like look"}, {"negative_prompt", "blurry, low quality"},
                         {"size", "96x64"}, {"steps", 3}, {"true_cfg_scale", 4.0}, {"seed", 0}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const auto expected = test::generate_pngs({"--model", fixture("tiny-qwenimage").string(), "--prompt",
                                             "a photo of a dog with cat-like look", "--negative-prompt",
                                             "blurry, low quality", "--width", "96", "--height", "64", "--steps", "3",
                                             "--true-cfg-scale", "4", "--seed", "0"});
  EXPECT_TRUE(test::base64_decode(test::json_of(res)["data"][0]["b64_json"].get<std::string>()) == expected[0]);
}

TEST(Server, BadRequestsGet400NamingTheField) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", fixture("tiny-flux").string(), "--max-body-bytes", "4096"});
  ASSERT_TRUE(server.ready());
  auto client = server.client();
  const auto raw = client->Post("/v1/images/generations", "{\"prompt\": ", "application/json");
  EXPECT_EQ(error_field(raw, 400), "body");
  EXPECT_EQ(error_field(client->Post("/v1/images/generations", "[1, 2]", "application/json"), 400), "body");
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"size", "64x64"}}, "prompt"},
      {{{"prompt", 3}}, "prompt"},
      {{{"prompt", "a"}, {"steps", "4"}}, "steps"},
      {{{"prompt", "a"}, {"steps", 2.5}}, "steps"},
      {{{"prompt", "a"}, {"steps", 0}}, "steps"},
      {{{"prompt", "a"}, {"steps", 100000}}, "steps"},
      {{{"prompt", "a"}, {"size", "90x64"}}, "size"},       // not a multiple of FLUX.1's 16
      {{{"prompt", "a"}, {"size", "65536x64"}}, "size"},    // absurd
      {{{"prompt", "a"}, {"size", "64 x 64"}}, "size"},
      {{{"prompt", "a"}, {"n", 100}}, "n"},
      {{{"prompt", "a"}, {"seed", -5}}, "seed"},
      {{{"prompt", "a"}, {"guidance", "high"}}, "guidance"},
      {{{"prompt", "a"}, {"negative_prompt", "blurry"}}, "negative_prompt"},  // FLUX.1 takes none
      {{{"prompt", "a"}, {"true_cfg_scale", 4}}, "true_cfg_scale"},
      {{{"prompt", "a"}, {"scheduler", "NoSuchScheduler"}}, "scheduler"},
      {{{"prompt", "a"}, {"response_format", "url"}}, "response_format"},
  };
  for (const auto& [body, field] : cases) {
    EXPECT_EQ(error_field(post(server, "/v1/images/generations", body), 400), field) << body.dump();
    EXPECT_EQ(error_field(post(server, "/v1/jobs", body), 400), field) << body.dump();
  }
  EXPECT_EQ(error_field(post(server, "/sdapi/v1/txt2img", {{"prompt", "a"}, {"width", 100}}), 400), "width");
  EXPECT_EQ(error_field(post(server, "/sdapi/v1/txt2img", {{"prompt", "a"}, {"cfg_scale", "x"}}), 400), "cfg_scale");
  EXPECT_EQ(error_field(post(server, "/sdapi/v1/txt2img", {{"prompt", "a"}, {"sampler_name", "Nope"}}), 400),
            "sampler_name");
  // A body over --max-body-bytes is refused before it is read.
  EXPECT_EQ(error_field(post(server, "/v1/images/generations", {{"prompt", std::string(10000, 'a')}}), 413), "body");
  EXPECT_EQ(error_field(client->Get("/v1/nothing"), 404), "");
  // None of it became a job.
  EXPECT_EQ(test::json_of(client->Get("/health"))["accepted"], 0);
}

TEST(Server, ApiKeyIsRequiredEverywhereButHealth) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", fixture("tiny-flux").string()}, {{"DIFFUSE_SERVER_API_KEY", "s3cret"}});
  ASSERT_TRUE(server.ready());
  auto client = server.client();
  EXPECT_EQ(client->Get("/health")->status, 200);
  EXPECT_EQ(client->Get("/")->status, 200);  // the page holds no data; its calls need the key
  EXPECT_EQ(error_field(client->Get("/v1/models"), 401), "Authorization");
  EXPECT_EQ(client->Get("/v1/models")->get_header_value("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(error_field(client->Get("/v1/models", {{"Authorization", "Bearer wrong"}}), 401), "Authorization");
  EXPECT_EQ(error_field(post(server, "/v1/images/generations", {{"prompt", "a"}}), 401), "Authorization");
  EXPECT_EQ(error_field(post(server, "/v1/jobs", {{"prompt", "a"}}), 401), "Authorization");
  EXPECT_EQ(error_field(client->Get("/v1/jobs/0123"), 401), "Authorization");
  const auto ok = client->Get("/v1/models", {{"Authorization", "Bearer s3cret"}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(test::json_of(ok)["data"][0]["family"], "FluxPipeline");
}

TEST(Server, FullQueueGets429WithRetryAfterAndSigtermStopsCleanly) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", fixture("tiny-flux").string(), "--queue", "1", "--max-steps", "10000",
                              "--stop-grace", "0"});
  ASSERT_TRUE(server.ready());
  // One job runs (long), one waits: the queue of 1 is full.
  const json slow = {{"prompt", "a"}, {"size", "32x32"}, {"steps", 10000}};
  const auto running = post(server, "/v1/jobs", slow);
  ASSERT_TRUE(running && running->status == 202) << (running ? running->body : "");
  const std::string running_id = test::json_of(running)["id"];
  auto client = server.client();
  for (int i = 0; i < 200 && test::json_of(client->Get(("/v1/jobs/" + running_id).c_str()))["state"] != "running"; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto waiting = post(server, "/v1/jobs", slow);
  ASSERT_TRUE(waiting && waiting->status == 202);
  EXPECT_EQ(test::json_of(waiting)["queue_position"], 1);
  const auto refused = post(server, "/v1/images/generations", slow);
  EXPECT_EQ(error_field(refused, 429), "");
  ASSERT_TRUE(refused && refused->has_header("Retry-After"));
  EXPECT_GE(std::stoi(refused->get_header_value("Retry-After")), 1);
  EXPECT_EQ(error_field(post(server, "/v1/jobs", slow), 429), "");
  EXPECT_EQ(test::json_of(client->Get("/health"))["rejected"], 2);

  // SIGTERM: the waiting job is cancelled, the running one stopped at its next step (grace 0), and the
  // server exits 0 soon.
  const auto start = std::chrono::steady_clock::now();
  const test::Outcome outcome = server.stop(SIGTERM, 30);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(outcome.exit_code, 0) << outcome.output;
  EXPECT_LT(seconds, 10);
  EXPECT_NE(outcome.output.find("SIGTERM: stopping"), std::string::npos) << outcome.output;
  EXPECT_NE(outcome.output.find("0 jobs succeeded, 0 failed, 2 cancelled, 2 refused"), std::string::npos)
      << outcome.output;
}
