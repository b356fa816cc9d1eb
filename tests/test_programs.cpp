// The bundled programs, run as a user runs them: the generate program reproduces diffusers' image
// and tensors from the command line; bad input exits non-zero with a one-line reason.

#include <array>
#include <cstdio>
#include <sys/wait.h>

#include "diffuse/io/image.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/io/safetensors.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

struct ProgramRun {
  int exit_code;
  std::string output;  // stdout and stderr together
};

std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

ProgramRun run(const std::string& program, const std::vector<std::string>& args) {
  std::string command = quoted((fs::path(DIFFUSE_EXAMPLES_BINARY_DIR) / program).string());
  for (const auto& arg : args) command += " " + quoted(arg);
  command += " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// generate's arguments for the reference call, from reference.json.
std::vector<std::string> reference_arguments() {
  const JsonConfig args = JsonConfig::load(*test::fixtures_dir() / "tiny-flux" / "reference.json");
  std::vector<std::string> out = {"--model", test::tiny_flux_pipeline().string()};
  for (const auto& prompt : args.get_string_list("prompts", {})) out.insert(out.end(), {"--prompt", prompt});
  out.insert(out.end(), {"--height", std::to_string(args.get_int("height", 0)),
                         "--width", std::to_string(args.get_int("width", 0)),
                         "--steps", std::to_string(args.get_int("num_inference_steps", 0)),
                         "--guidance", std::to_string(args.get_double("guidance_scale", 0)),
                         "--max-sequence-length", std::to_string(args.get_int("max_sequence_length", 0)),
                         "--seed", std::to_string(args.get_int("seed", 0)), "--quiet"});
  return out;
}

}  // namespace

TEST(GenerateProgram, ReproducesTheReferenceImageAndTensors) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::temporary_folder("generate_program");
  auto args = reference_arguments();
  args.insert(args.end(), {"--output", (dir / "dog.png").string(), "--save-tensors", (dir / "out.safetensors").string()});
  const ProgramRun result = run("generate", args);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("dog.png"), std::string::npos) << result.output;

  const SafetensorsFile& reference = test::tiny_flux_reference();
  SafetensorsFile tensors(dir / "out.safetensors");
  EXPECT_EQ(tensors.info("latents").dtype, "F32");
  EXPECT_TENSORS_CLOSE(tensors.load("latents"), reference.load("latents_final"), 1e-4);
  EXPECT_TENSORS_CLOSE(tensors.load("image"), reference.load("pipeline_output_pt"), 1e-4);

  const Image image = Image::load_png(dir / "dog.png");
  at::Tensor pixels = at::from_blob(const_cast<uint8_t*>(image.pixels.data()), {1, image.height, image.width, 3}, at::kByte);
  EXPECT_LE((pixels.to(at::kInt) - reference.load("image_uint8").to(at::kInt)).abs().max().item<int>(), 1);
}

TEST(GenerateProgram, LatentOutputAndGivenLatents) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::temporary_folder("generate_program_latents");
  save_safetensors(dir / "init.safetensors", {{"latents", test::tiny_flux_reference().load("latents_init")}});
  auto args = reference_arguments();
  args.insert(args.end(), {"--latents", (dir / "init.safetensors").string(), "--output-type", "latent",
                           "--save-tensors", (dir / "latents.safetensors").string()});
  const ProgramRun result = run("generate", args);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  SafetensorsFile tensors(dir / "latents.safetensors");
  EXPECT_FALSE(tensors.contains("image"));
  EXPECT_TENSORS_CLOSE(tensors.load("latents"), test::tiny_flux_reference().load("latents_final"), 1e-4);
}

TEST(GenerateProgram, BadInputExitsNonZeroWithOneLine) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::temporary_folder("generate_program_bad");
  const std::string model = test::tiny_flux_pipeline().string();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--model", model, "--prompt", "x", "--height", "100"}, "not a multiple of 16"},
      {{"--model", model}, "--prompt TEXT is required"},
      {{"--prompt", "x"}, "--model DIR is required"},
      {{"--model", model, "--prompt", "x", "--steps", "many"}, "--steps expects an integer"},
      {{"--model", model, "--prompt", "x", "--dtype", "int3"}, "unknown dtype 'int3'"},
      {{"--model", (dir / "nowhere").string(), "--prompt", "x"}, "no model_index.json"},
      {{"--model", model, "--prompt", "x", "--output", (dir / "no" / "x.png").string()}, "does not exist"},
      {{"--model", model, "--prompt", "x", "--latents", (dir / "absent.safetensors").string()}, "absent.safetensors"},
      {{"--model", model, "--prompt", "x", "--bogus"}, "unknown option '--bogus'"},
  };
  for (const auto& [args, expected] : cases) {
    const ProgramRun result = run("generate", args);
    EXPECT_NE(result.exit_code, 0) << expected;
    EXPECT_NE(result.output.find(expected), std::string::npos) << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
  }
  EXPECT_TRUE(fs::is_empty(dir));
  const ProgramRun help = run("generate", {"--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag : {"--model", "--prompt", "--height", "--width", "--steps", "--guidance", "--seed", "--output",
                           "--max-sequence-length", "--num-images-per-prompt", "--output-type", "--latents",
                           "--save-tensors", "--dtype", "--device"})
    EXPECT_NE(help.output.find(flag), std::string::npos) << flag;
}

TEST(Programs, InspectAndMakeRandomPipelineAndModelSharding) {
  const fs::path dir = test::temporary_folder("programs_random");
  const ProgramRun made = run("make_random_pipeline", {"--shape", "flux-tiny", "--output", (dir / "tiny").string()});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const ProgramRun inspected = run("inspect", {(dir / "tiny").string(), "--json"});
  ASSERT_EQ(inspected.exit_code, 0) << inspected.output;
  EXPECT_NE(inspected.output.find("\"FluxTransformer2DModel\""), std::string::npos);

  const ProgramRun sharded = run("model_sharding", {"--model", (dir / "tiny").string(), "--prompt", "a cat", "--height", "32",
                                             "--width", "32", "--steps", "2", "--output", (dir / "cat.png").string()});
  ASSERT_EQ(sharded.exit_code, 0) << sharded.output;
  EXPECT_EQ(Image::load_png(dir / "cat.png").width, 32);
  // The same request in one call gives the same image.
  const ProgramRun whole = run("generate", {"--model", (dir / "tiny").string(), "--prompt", "a cat", "--height", "32", "--width",
                                     "32", "--steps", "2", "--seed", "0", "--quiet", "--output", (dir / "one.png").string()});
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  EXPECT_EQ(Image::load_png(dir / "cat.png").pixels, Image::load_png(dir / "one.png").pixels);

  EXPECT_NE(run("make_random_pipeline", {"--shape", "flux-huge", "--output", (dir / "x").string()}).exit_code, 0);
  EXPECT_NE(run("inspect", {(dir / "nowhere").string()}).exit_code, 0);
}
