// diffuse-server over several pipelines, on the CPU with Gloo: --devices cpu,cpu loads one pipeline
// per device and runs two jobs at once (data parallel behind one endpoint); under a launcher with
// --ulysses-degree 2 (or --cfg-degree 2 on SD), rank 0 serves and both ranks run each job together
// (context or CFG parallel behind one endpoint), giving the single process's image, and a cancel stops
// both ranks at the same step.

#include "diffuse/distributed/distributed.hpp"
#include "diffuse/io/image.hpp"
#include "support/server_process.hpp"

using namespace diffuse;
namespace fs = std::filesystem;
using nlohmann::json;
using test::get;
using test::post;

namespace {

fs::path tiny_flux() { return *test::fixtures_dir() / "tiny-flux" / "pipeline"; }

const json kRequest = {{"prompt", "a photo of a dog with cat-like look"}, {"size", "96x64"}, {"steps", 4},
                       {"guidance", 3.5}, {"seed", 0}};
const std::vector<std::string> kGenerateArgs = {"--prompt", "a photo of a dog with cat-like look", "--width", "96",
                                                "--height", "64", "--steps", "4", "--guidance", "3.5", "--seed", "0"};

Image decode(const std::string& png, const std::string& name) {
  // A folder per process and image: ctest runs these tests in parallel processes.
  const fs::path path = test::temporary_folder("server_parallel_" + std::to_string(getpid()) + "_" + name) / "image.png";
  std::ofstream(path, std::ios::binary) << png;
  return Image::load_png(path);
}

// The largest difference of two images' pixels, in levels of 255 (-1 when their sizes differ).
int max_pixel_difference(const Image& a, const Image& b) {
  if (a.pixels.size() != b.pixels.size()) return -1;
  int out = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) out = std::max(out, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return out;
}

// Waits until `count` of the jobs are running at the same moment.
bool running_together(const test::ServerProcess& server, const std::vector<std::string>& ids) {
  for (int i = 0; i < 1500; ++i) {
    size_t running = 0;
    for (const auto& id : ids) running += get(server, "/v1/jobs/" + id)["state"] == "running";
    if (running == ids.size()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace

TEST(ServerParallel, TwoPipelinesRunTwoJobsAtOnce) {
  DIFFUSE_REQUIRE_FIXTURES();
  test::ServerProcess server({"--model", tiny_flux().string(), "--devices", "cpu,cpu", "--max-steps", "10000"});
  ASSERT_TRUE(server.ready());
  EXPECT_EQ(get(server, "/v1/models")["data"][0]["devices"], json::array({"cpu", "cpu"}));
  EXPECT_EQ(get(server, "/health")["workers"], 2);
  std::vector<std::string> ids;
  for (int i = 0; i < 2; ++i) {
    const auto res = post(server, "/v1/jobs", {{"prompt", "a"}, {"size", "32x32"}, {"steps", 10000}});
    ASSERT_TRUE(res && res->status == 202);
    ids.push_back(test::json_of(res)["id"]);
  }
  EXPECT_TRUE(running_together(server, ids)) << "the two jobs did not run at the same time";
  for (const auto& id : ids) EXPECT_EQ(server.client()->Delete(("/v1/jobs/" + id).c_str())->status, 200);
  // Either pipeline gives generate's PNG.
  std::vector<std::string> args = {"--model", tiny_flux().string()};
  args.insert(args.end(), kGenerateArgs.begin(), kGenerateArgs.end());
  const std::string expected = test::generate_pngs(args)[0];
  for (int i = 0; i < 2; ++i) {
    const auto res = post(server, "/v1/images/generations", kRequest);
    ASSERT_TRUE(res && res->status == 200);
    EXPECT_TRUE(test::base64_decode(test::json_of(res)["data"][0]["b64_json"].get<std::string>()) == expected);
  }
}

TEST(ServerParallel, ContextParallelRanksServeTheSingleProcessImage) {
  DIFFUSE_REQUIRE_FIXTURES();
  if (!gloo_available()) GTEST_SKIP() << "this build has no Gloo; skipping";
  test::ServerProcess server({"--model", tiny_flux().string(), "--ulysses-degree", "2", "--max-steps", "10000"},
                             {{"DIFFUSE_DIST_TIMEOUT", "60"}}, 120, /*world=*/2);
  ASSERT_TRUE(server.ready());
  EXPECT_NE(get(server, "/v1/models")["data"][0]["devices"][0].get<std::string>().find("ulysses 2 over 2 ranks"),
            std::string::npos);
  // A cancelled job stops on both ranks at the same step: the next job still runs on both.
  const auto long_job = post(server, "/v1/jobs", {{"prompt", "a"}, {"size", "32x32"}, {"steps", 10000}});
  ASSERT_TRUE(long_job && long_job->status == 202);
  const std::string id = test::json_of(long_job)["id"];
  ASSERT_TRUE(running_together(server, {id}));
  EXPECT_EQ(server.client()->Delete(("/v1/jobs/" + id).c_str())->status, 200);

  const auto res = post(server, "/v1/images/generations", kRequest);
  ASSERT_TRUE(res && res->status == 200) << (res ? res->body : "") << server.output();
  const Image served = decode(test::base64_decode(test::json_of(res)["data"][0]["b64_json"].get<std::string>()), "served");
  std::vector<std::string> args = {"--model", tiny_flux().string()};
  args.insert(args.end(), kGenerateArgs.begin(), kGenerateArgs.end());
  const Image alone = decode(test::generate_pngs(args)[0], "alone");
  const int max_difference = max_pixel_difference(served, alone);
  ASSERT_GE(max_difference, 0) << "the images differ in size";
  std::cout << "[ measured ] context parallel (ulysses 2) vs one process: max pixel difference " << max_difference
            << " (bitwise equal: " << (served.pixels == alone.pixels ? "yes" : "no") << ")\n";
  EXPECT_LE(max_difference, 1);

  // SIGTERM to rank 0: it tells rank 1 to stop, and both exit 0.
  const auto outcomes = server.stop_all(SIGTERM, 60);
  for (const auto& o : outcomes) EXPECT_EQ(o.exit_code, 0) << test::describe(outcomes);
}

TEST(ServerParallel, CfgParallelRanksServeTheSingleProcessImage) {
  DIFFUSE_REQUIRE_FIXTURES();
  if (!gloo_available()) GTEST_SKIP() << "this build has no Gloo; skipping";
  const fs::path sd = *test::fixtures_dir() / "tiny-sd" / "pipeline";
  test::ServerProcess server({"--model", sd.string(), "--cfg-degree", "2"}, {{"DIFFUSE_DIST_TIMEOUT", "60"}}, 120,
                             /*world=*/2);
  ASSERT_TRUE(server.ready());
  EXPECT_NE(get(server, "/v1/models")["data"][0]["devices"][0].get<std::string>().find("cfg 2 over 2 ranks"),
            std::string::npos);
  const auto res = post(server, "/sdapi/v1/txt2img",
                        {{"prompt", "a photo of a dog with cat-like look"}, {"negative_prompt", "blurry, low quality"},
                         {"width", 96}, {"height", 64}, {"steps", 4}, {"cfg_scale", 7.5}, {"seed", 0}});
  ASSERT_TRUE(res && res->status == 200) << (res ? res->body : "") << server.output();
  const Image served = decode(test::base64_decode(test::json_of(res)["images"][0].get<std::string>()), "cfg_served");
  const Image alone = decode(test::generate_pngs({"--model", sd.string(), "--prompt", "a photo of a dog with cat-like look",
                                                  "--negative-prompt", "blurry, low quality", "--width", "96", "--height",
                                                  "64", "--steps", "4", "--guidance", "7.5", "--seed", "0"})[0],
                             "cfg_alone");
  const int max_difference = max_pixel_difference(served, alone);
  std::cout << "[ measured ] CFG parallel (cfg 2) vs one process: max pixel difference " << max_difference
            << " (bitwise equal: " << (served.pixels == alone.pixels ? "yes" : "no") << ")\n";
  EXPECT_GE(max_difference, 0) << "the images differ in size";
  EXPECT_LE(max_difference, 1);
  const auto outcomes = server.stop_all(SIGTERM, 60);
  for (const auto& o : outcomes) EXPECT_EQ(o.exit_code, 0) << test::describe(outcomes);
}
