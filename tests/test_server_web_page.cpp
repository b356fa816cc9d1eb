// diffuse-server's web page in a real browser: headless Chromium (Debian's chromium and
// chromium-driver) driven over the WebDriver protocol (plain HTTP and JSON, through cpp-httplib's
// client) loads the page, submits a prompt and sees the image appear. Skips when either is absent.

#include "support/server_process.hpp"

using namespace diffuse;
using nlohmann::json;

namespace {

const char* kChromium = "/usr/bin/chromium";
const char* kChromedriver = "/usr/bin/chromedriver";
const char* kElement = "element-6066-11e4-a52e-4f735466cecf";  // WebDriver's key for element references

// One WebDriver session: each call is a JSON request, each answer's "value".
class Browser {
 public:
  explicit Browser(int port) : client_("127.0.0.1", port) {
    client_.set_read_timeout(60);
    // A profile of its own, under the build tree: nothing in $HOME, no clash with another run.
    const std::string profile = test::temporary_folder("server_web_page_profile").string();
    const json capabilities = {
        {"capabilities",
         {{"alwaysMatch",
           {{"goog:chromeOptions",
             {{"binary", kChromium},
              {"args", {"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                        "--user-data-dir=" + profile}}}}}}}}};
    const json session = call("POST", "/session", capabilities);
    session_ = session.value("sessionId", "");
  }
  ~Browser() {
    if (!session_.empty()) client_.Delete(("/session/" + session_).c_str());
  }
  bool ok() const { return !session_.empty(); }

  json call(const std::string& method, const std::string& path, const json& body = json::object()) {
    httplib::Result res = method == "POST" ? client_.Post(path.c_str(), body.dump(), "application/json")
                                           : client_.Get(path.c_str());
    if (!res) {
      ADD_FAILURE() << "WebDriver " << method << " " << path << ": " << httplib::to_string(res.error());
      return nullptr;
    }
    const json answer = json::parse(res->body, nullptr, false);
    EXPECT_EQ(res->status, 200) << method << " " << path << ": " << res->body.substr(0, 500);
    return answer.is_object() ? answer["value"] : json();
  }
  json session(const std::string& method, const std::string& path, const json& body = json::object()) {
    return call(method, "/session/" + session_ + path, body);
  }
  std::string element(const std::string& css) {
    const json found = session("POST", "/element", {{"using", "css selector"}, {"value", css}});
    return found.is_object() && found.contains(kElement) ? found[kElement].get<std::string>() : "";
  }
  void type(const std::string& css, const std::string& text) {
    const std::string id = element(css);
    session("POST", "/element/" + id + "/clear");
    session("POST", "/element/" + id + "/value", {{"text", text}});
  }
  json script(const std::string& code) { return session("POST", "/execute/sync", {{"script", code}, {"args", json::array()}}); }

 private:
  httplib::Client client_;
  std::string session_;
};

}  // namespace

TEST(ServerWebPage, HeadlessChromiumSubmitsAPromptAndSeesTheImage) {
  DIFFUSE_REQUIRE_FIXTURES();
  if (!std::filesystem::exists(kChromium) || !std::filesystem::exists(kChromedriver))
    GTEST_SKIP() << "headless Chromium is not installed (" << kChromium << ", " << kChromedriver
                 << "; Debian: chromium chromium-driver); skipping the web page test";
  test::ServerProcess server({"--model", (*test::fixtures_dir() / "tiny-flux" / "pipeline").string()});
  ASSERT_TRUE(server.ready());

  test::ProcessGroup driver;
  const int driver_port = test::free_port();
  driver.start({kChromedriver, "--port=" + std::to_string(driver_port)});
  httplib::Client probe("127.0.0.1", driver_port);
  bool up = false;
  for (int i = 0; i < 200 && !up; ++i) {
    const auto res = probe.Get("/status");
    up = res && res->status == 200;
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(up) << "chromedriver did not start:\n" << driver.output(0);

  Browser browser(driver_port);
  ASSERT_TRUE(browser.ok()) << "no WebDriver session (chromium could not start):\n" << driver.output(0);
  browser.session("POST", "/url", {{"url", "http://127.0.0.1:" + std::to_string(server.port()) + "/"}});
  EXPECT_EQ(browser.session("GET", "/title"), "diffuse-server");
  // The page fills the model's defaults from /v1/models; then the form is set and submitted.
  json described;
  for (int i = 0; i < 100; ++i) {
    described = browser.script("return document.getElementById('model').textContent;");
    if (described.is_string() && described.get<std::string>().find("FluxPipeline") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(described.get<std::string>().find("FluxPipeline"), std::string::npos) << described;
  browser.type("#prompt", "a photo of a dog with cat-like look");
  browser.type("#width", "96");
  browser.type("#height", "64");
  browser.type("#steps", "4");
  browser.type("#seed", "0");
  browser.session("POST", "/element/" + browser.element("#generate") + "/click");

  json state;
  for (int i = 0; i < 600; ++i) {
    state = browser.script(
        "const img = document.getElementById('image');"
        "return {width: img.naturalWidth, height: img.naturalHeight, complete: img.complete,"
        "        status: document.getElementById('status').textContent,"
        "        progress: document.getElementById('progress').value,"
        "        max: document.getElementById('progress').max, seed: img.dataset.seed || ''};");
    if (state.is_object() && state["width"] == 96) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(state.is_object());
  EXPECT_EQ(state["width"], 96) << state.dump();
  EXPECT_EQ(state["height"], 64) << state.dump();
  EXPECT_EQ(state["seed"], "0");
  EXPECT_EQ(state["progress"], 4);
  EXPECT_EQ(state["max"], 4);
  EXPECT_NE(state["status"].get<std::string>().find("done"), std::string::npos) << state.dump();
}
