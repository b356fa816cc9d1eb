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

// `stderr_only`: the output is what the program wrote to stderr; its stdout is dropped.
ProgramRun run(const std::string& program, const std::vector<std::string>& args, bool stderr_only = false) {
  std::string command = quoted((fs::path(DIFFUSE_EXAMPLES_BINARY_DIR) / program).string());
  for (const auto& arg : args) command += " " + quoted(arg);
  command += stderr_only ? " 2>&1 >/dev/null" : " 2>&1";
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

// generate's arguments for tiny-sd's reference call (prompts, negative prompts, guidance), from
// reference.json.
std::vector<std::string> sd_reference_arguments() {
  const fs::path sd = *test::fixtures_dir() / "tiny-sd";
  const JsonConfig args = JsonConfig::load(sd / "reference.json");
  std::vector<std::string> out = {"--model", (sd / "pipeline").string()};
  for (const auto& prompt : args.get_string_list("prompts", {})) out.insert(out.end(), {"--prompt", prompt});
  for (const auto& prompt : args.get_string_list("negative_prompts", {}))
    out.insert(out.end(), {"--negative-prompt", prompt});
  out.insert(out.end(), {"--height", std::to_string(args.get_int("height", 0)),
                         "--width", std::to_string(args.get_int("width", 0)),
                         "--steps", std::to_string(args.get_int("num_inference_steps", 0)),
                         "--guidance", std::to_string(args.get_double("guidance_scale", 0)),
                         "--seed", std::to_string(args.get_int("seed", 0)), "--quiet"});
  return out;
}

// The reference call of a fixture (tiny-flux, tiny-sd, tiny-qwenimage) as the options generate and
// model_sharding both take, from its reference.json: the arguments a family does not have are absent there.
std::vector<std::string> fixture_arguments(const std::string& fixture) {
  const fs::path folder = *test::fixtures_dir() / fixture;
  const JsonConfig args = JsonConfig::load(folder / "reference.json");
  std::vector<std::string> out = {"--model", (folder / "pipeline").string()};
  for (const auto& prompt : args.get_string_list("prompts", {})) out.insert(out.end(), {"--prompt", prompt});
  for (const auto& prompt : args.get_string_list("negative_prompts", {}))
    out.insert(out.end(), {"--negative-prompt", prompt});
  const std::vector<std::pair<const char*, const char*>> integers = {
      {"height", "--height"}, {"width", "--width"}, {"num_inference_steps", "--steps"},
      {"max_sequence_length", "--max-sequence-length"}, {"seed", "--seed"}};
  for (const auto& [key, option] : integers)
    if (args.has(key)) out.insert(out.end(), {option, std::to_string(args.get_int(key, 0))});
  const std::vector<std::pair<const char*, const char*>> scales = {{"guidance_scale", "--guidance"},
                                                                    {"true_cfg_scale", "--true-cfg-scale"}};
  for (const auto& [key, option] : scales)
    if (args.has(key)) out.insert(out.end(), {option, std::to_string(args.get_double(key, 0))});
  return out;
}

std::vector<std::string> with(std::vector<std::string> base, const std::vector<std::string>& more) {
  base.insert(base.end(), more.begin(), more.end());
  return base;
}

at::Tensor png_pixels(const fs::path& path) {
  const Image image = Image::load_png(path);
  return at::from_blob(const_cast<uint8_t*>(image.pixels.data()), {image.height, image.width, 3}, at::kByte)
      .to(at::kInt);
}

// generate's arguments for tiny-qwenimage's reference call (prompts, negative prompts, true CFG,
// sequence length), from reference.json.
std::vector<std::string> qwen_reference_arguments() {
  const fs::path qwen = *test::fixtures_dir() / "tiny-qwenimage";
  const JsonConfig args = JsonConfig::load(qwen / "reference.json");
  std::vector<std::string> out = {"--model", (qwen / "pipeline").string()};
  for (const auto& prompt : args.get_string_list("prompts", {})) out.insert(out.end(), {"--prompt", prompt});
  for (const auto& prompt : args.get_string_list("negative_prompts", {}))
    out.insert(out.end(), {"--negative-prompt", prompt});
  out.insert(out.end(), {"--height", std::to_string(args.get_int("height", 0)),
                         "--width", std::to_string(args.get_int("width", 0)),
                         "--steps", std::to_string(args.get_int("num_inference_steps", 0)),
                         "--true-cfg-scale", std::to_string(args.get_double("true_cfg_scale", 0)),
                         "--max-sequence-length", std::to_string(args.get_int("max_sequence_length", 0)),
                         "--seed", std::to_string(args.get_int("seed", 0)), "--quiet"});
  return out;
}

}  // namespace

// The staged flow (text components, then the denoiser, then the VAE, each loaded alone) makes generate's
// image for every family: the same latents and image tensor (within 1e-5) and PNG (within 1 level).
TEST(ModelShardingProgram, ReproducesGenerateOnEveryFamily) {
  DIFFUSE_REQUIRE_FIXTURES();
  for (const std::string fixture : {"tiny-flux", "tiny-sd", "tiny-qwenimage"}) {
    SCOPED_TRACE(fixture);
    const fs::path dir = test::temporary_folder("model_sharding_" + fixture);
    const std::vector<std::string> args = fixture_arguments(fixture);
    const ProgramRun whole = run("generate", with(args, {"--quiet", "--output", (dir / "whole.png").string(),
                                                          "--save-tensors", (dir / "whole.safetensors").string()}));
    ASSERT_EQ(whole.exit_code, 0) << whole.output;
    const ProgramRun staged = run("model_sharding", with(args, {"--output", (dir / "staged.png").string(),
                                                                 "--save-tensors", (dir / "staged.safetensors").string()}));
    ASSERT_EQ(staged.exit_code, 0) << staged.output;
    for (const char* stage : {"1. ", "2. denoised with ", "3. decoded with vae"})
      EXPECT_NE(staged.output.find(stage), std::string::npos) << stage << "\n" << staged.output;

    const SafetensorsFile a(dir / "staged.safetensors"), b(dir / "whole.safetensors");
    const std::string what = fixture + " staged vs one call: ";
    test::print_error((what + "latents").c_str(), a.load("latents"), b.load("latents"));
    test::print_error((what + "image").c_str(), a.load("image"), b.load("image"));
    EXPECT_TENSORS_CLOSE(a.load("latents"), b.load("latents"), 1e-5);
    EXPECT_TENSORS_CLOSE(a.load("image"), b.load("image"), 1e-5);
    const at::Tensor pixels = png_pixels(dir / "staged.png"), expected = png_pixels(dir / "whole.png");
    ASSERT_EQ(pixels.sizes(), expected.sizes());
    const int levels = (pixels - expected).abs().max().item<int>();
    std::printf("[ measured ] %sPNG: max pixel difference %d levels\n", what.c_str(), levels);
    EXPECT_LE(levels, 1);

    // --save-tensors also holds stage 1's output: the fixture's embeddings (and masks) under diffusers' names.
    const SafetensorsFile reference(*test::fixtures_dir() / fixture / "reference.safetensors");
    for (const char* name : {"prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds"}) {
      ASSERT_EQ(a.contains(name), reference.contains(name)) << name;
      if (a.contains(name)) EXPECT_TENSORS_CLOSE(a.load(name), reference.load(name), 1e-4) << name;
    }
    for (const char* name : {"prompt_embeds_mask", "negative_prompt_embeds_mask"}) {
      if (!reference.contains(name)) continue;
      const at::Tensor expected = reference.load(name, at::kLong);
      // No mask written: every position is valid (diffusers passes None then).
      if (a.contains(name)) EXPECT_TRUE(at::equal(a.load(name), expected)) << name;
      else EXPECT_TRUE(expected.eq(1).all().item<bool>()) << name << " absent but the reference masks positions";
    }

    // Given latents (--latents), stage 2 starts from them: the fixture's final latents.
    save_safetensors(dir / "init.safetensors", {{"latents", reference.load("latents_init")}});
    const ProgramRun given = run("model_sharding", with(args, {"--output", (dir / "given.png").string(), "--latents",
                                                                (dir / "init.safetensors").string(), "--save-tensors",
                                                                (dir / "given.safetensors").string()}));
    ASSERT_EQ(given.exit_code, 0) << given.output;
    EXPECT_TENSORS_CLOSE(SafetensorsFile(dir / "given.safetensors").load("latents"), reference.load("latents_final"),
                         1e-4);
  }
}

// The defaults are the family's: tiny-sd's size is its UNet's sample_size * 8, not a fixed 1024; a
// negative prompt on a family without one, and a folder without model_index.json, are one-line errors.
TEST(ModelShardingProgram, FamilyDefaultsAndBadInput) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::temporary_folder("model_sharding_defaults");
  const fs::path sd = *test::fixtures_dir() / "tiny-sd" / "pipeline";
  const int64_t sample_size = JsonConfig::load(sd / "unet" / "config.json").get_int("sample_size", 0);
  const ProgramRun made = run("model_sharding", {"--model", sd.string(), "--prompt", "a dog", "--steps", "1",
                                                 "--output", (dir / "dog.png").string()});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const Image image = Image::load_png(dir / "dog.png");
  EXPECT_EQ(image.height, sample_size * 8);
  EXPECT_EQ(image.width, sample_size * 8);

  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--model", test::tiny_flux_pipeline().string(), "--prompt", "x", "--negative-prompt", "y"},
       "FluxPipeline takes no negative prompt"},
      {{"--model", (dir / "nowhere").string(), "--prompt", "x"}, "no model_index.json"},
      {{"--model", sd.string(), "--prompt", "x", "--true-cfg-scale", "4", "--steps", "1"}, "StableDiffusionPipeline takes no true_cfg_scale"},
  };
  for (const auto& [args, expected] : cases) {
    const ProgramRun result = run("model_sharding", with(args, {"--output", (dir / "x.png").string()}),
                                  /*stderr_only=*/true);
    EXPECT_EQ(result.exit_code, 1) << expected;
    EXPECT_NE(result.output.find(expected), std::string::npos) << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
  }
  EXPECT_FALSE(fs::exists(dir / "x.png"));
}

// device_map on the CPU for every family: planned maps of the folder's components and of its denoiser
// (the transformer or the UNet) within cpu=1MB,disk=1GB, the staged flow with the denoiser split between
// CPU memory and disk, and CPU offload, each equal to the one-device call.
TEST(DeviceMapProgram, RunsEveryFamilyOnTheCpu) {
  DIFFUSE_REQUIRE_FIXTURES();
  const std::vector<std::pair<std::string, std::string>> fixtures = {
      {"tiny-flux", "transformer"}, {"tiny-sd", "unet"}, {"tiny-qwenimage", "transformer"}};
  for (const auto& [fixture, denoiser] : fixtures) {
    SCOPED_TRACE(fixture);
    const fs::path folder = *test::fixtures_dir() / fixture / "pipeline";
    const ProgramRun result = run("device_map", {"--model", folder.string(), "--height", "64", "--width", "96"});
    EXPECT_EQ(result.exit_code, 0) << result.output;
    const std::string class_name = JsonConfig::load(folder / "model_index.json").get_string("_class_name", "");
    for (const std::string part :
         {class_name + " (" + denoiser + ")", std::string("pipeline, device_map \"balanced\""),
          denoiser + ", device_map \"auto\"", denoiser + ", device_map \"sequential\"",
          std::string("does not fit max_memory"), std::string("text encoders, device_map \"balanced\": {"),
          std::string("\"disk\""), std::string("enable_sequential_cpu_offload"), std::string("all outputs match")})
      EXPECT_NE(result.output.find(part), std::string::npos) << part << " missing from:\n" << result.output;
    for (const char* line : {"device-mapped flow vs one device", "enable_model_cpu_offload: latents"}) {
      const auto at = result.output.find(line);
      if (at != std::string::npos) std::printf("[ measured ] %s %s\n", fixture.c_str(),
                                               result.output.substr(at, result.output.find('\n', at) - at).c_str());
    }
  }
}

TEST(GenerateProgram, ReproducesQwenImageFromTheSeedAndFromLatents) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::temporary_folder("generate_program_qwen");
  const SafetensorsFile reference(*test::fixtures_dir() / "tiny-qwenimage" / "reference.safetensors");
  auto args = qwen_reference_arguments();
  args.insert(args.end(), {"--output", (dir / "dog.png").string(), "--save-tensors", (dir / "out.safetensors").string()});
  ProgramRun result = run("generate", args);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  SafetensorsFile tensors(dir / "out.safetensors");
  EXPECT_TENSORS_CLOSE(tensors.load("latents"), reference.load("latents_final"), 1e-4);
  EXPECT_TENSORS_CLOSE(tensors.load("image"), reference.load("pipeline_output_pt"), 1e-4);

  // Given latents, packed as diffusers' latents= takes them ([B, tokens, channels * 4]).
  save_safetensors(dir / "init.safetensors", {{"latents", reference.load("latents_init")}});
  args = qwen_reference_arguments();
  args.insert(args.end(), {"--latents", (dir / "init.safetensors").string(), "--output-type", "latent",
                           "--save-tensors", (dir / "latents.safetensors").string()});
  result = run("generate", args);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TENSORS_CLOSE(SafetensorsFile(dir / "latents.safetensors").load("latents"), reference.load("latents_final"),
                       1e-4);
  // Qwen-Image's sequence limit is 1024 tokens.
  args = qwen_reference_arguments();
  args.insert(args.end(), {"--max-sequence-length", "1025", "--output", (dir / "x.png").string()});
  result = run("generate", args);
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("max_sequence_length must be in [1, 1024], got 1025"), std::string::npos) << result.output;
}

TEST(GenerateProgram, ReproducesStableDiffusionFromTheSeedAndFromLatents) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::temporary_folder("generate_program_sd");
  const SafetensorsFile reference(*test::fixtures_dir() / "tiny-sd" / "reference.safetensors");
  auto args = sd_reference_arguments();
  args.insert(args.end(), {"--output", (dir / "dog.png").string(), "--save-tensors", (dir / "out.safetensors").string()});
  ProgramRun result = run("generate", args);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  SafetensorsFile tensors(dir / "out.safetensors");
  EXPECT_TENSORS_CLOSE(tensors.load("latents"), reference.load("latents_final"), 1e-4);
  EXPECT_TENSORS_CLOSE(tensors.load("image"), reference.load("pipeline_output_pt"), 1e-4);

  // Given latents, as diffusers' latents= takes them ([B, 4, h, w]), and a swapped scheduler by name.
  save_safetensors(dir / "init.safetensors", {{"latents", reference.load("latents_init")}});
  args = sd_reference_arguments();
  args.insert(args.end(), {"--latents", (dir / "init.safetensors").string(), "--output-type", "latent",
                           "--save-tensors", (dir / "latents.safetensors").string()});
  result = run("generate", args);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TENSORS_CLOSE(SafetensorsFile(dir / "latents.safetensors").load("latents"), reference.load("latents_final"),
                       1e-4);
  args = sd_reference_arguments();
  args.insert(args.end(), {"--scheduler", "dpm++2m", "--output-type", "latent", "--output", (dir / "x.png").string()});
  result = run("generate", args);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  args.insert(args.end(), {"--scheduler", "no-such"});
  result = run("generate", args);
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.output.find("unknown scheduler 'no-such'"), std::string::npos) << result.output;
}

// --cfg-degree 2 under the launcher: the two guidance passes on two processes make one process's
// latents (within 1e-5) and image (within 1 level); rank 0 alone writes. Qwen-Image through
// context_parallel, CFG 2 x Ulysses 2 on 4 processes, the same.
TEST(GenerateProgram, CfgDegree2MakesTheOneProcessImage) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::temporary_folder("generate_program_cfg");
  const std::string generate = (fs::path(DIFFUSE_EXAMPLES_BINARY_DIR) / "generate").string();
  auto alone = with(sd_reference_arguments(), {"--output", (dir / "alone.png").string(), "--save-tensors",
                                                (dir / "alone.safetensors").string()});
  ProgramRun result = run("generate", alone);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  std::vector<std::string> launched = {"--nproc-per-node", "2", "--no-prefix", generate};
  launched = with(launched, with(sd_reference_arguments(), {"--cfg-degree", "2", "--output", (dir / "cfg.png").string(),
                                                            "--save-tensors", (dir / "cfg.safetensors").string()}));
  result = run("diffuse-launch", launched);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TENSORS_CLOSE(SafetensorsFile(dir / "cfg.safetensors").load("latents"),
                       SafetensorsFile(dir / "alone.safetensors").load("latents"), 1e-5);
  EXPECT_LE((png_pixels(dir / "cfg.png") - png_pixels(dir / "alone.png")).abs().max().item<int>(), 1);

  alone = with(qwen_reference_arguments(), {"--output", (dir / "qwen_alone.png").string()});
  result = run("generate", alone);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  launched = {"--nproc-per-node", "4", "--no-prefix", (fs::path(DIFFUSE_EXAMPLES_BINARY_DIR) / "context_parallel").string()};
  launched = with(launched, with(qwen_reference_arguments(), {"--cfg-degree", "2", "--ulysses-degree", "2", "--output",
                                                              (dir / "qwen_cfg.png").string()}));
  result = run("diffuse-launch", launched);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_LE((png_pixels(dir / "qwen_cfg.png") - png_pixels(dir / "qwen_alone.png")).abs().max().item<int>(), 1);
}

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
      {{"--model", model, "--prompt", "x", "--dtype", "int3"}, "--dtype expects float32, bfloat16 or float16, got 'int3'"},
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

// ---- the shared argument layer (examples/cli) -------------------------------------------------------

// Every C++ program refuses a malformed number, a number out of range and an unknown choice before
// any work: exit code 2 and one line on stderr, "PROGRAM: --OPTION expects ..., got 'TEXT' (see --help)".
// The model folder does not exist: the arguments are refused before anything reads it.
TEST(Programs, RefuseMalformedNumbersAndUnknownChoicesWithOneLine) {
  const fs::path dir = test::temporary_folder("programs_usage");
  const std::string model = (dir / "no-model").string();
  const std::vector<std::string> generate = {"--model", model, "--prompt", "x"};
  auto with = [](std::vector<std::string> base, std::vector<std::string> more) {
    base.insert(base.end(), more.begin(), more.end());
    return base;
  };
  struct Case {
    std::string program;
    std::vector<std::string> args;
    std::string expected;  // the option and the text it was given
  };
  const std::vector<Case> cases = {
      {"generate", with(generate, {"--steps", "3x"}), "--steps expects an integer of at least 1, got '3x'"},
      {"generate", with(generate, {"--steps", "0x10"}), "--steps expects an integer of at least 1, got '0x10'"},
      {"generate", with(generate, {"--steps", "0"}), "--steps expects an integer of at least 1, got '0'"},
      {"generate", with(generate, {"--guidance", "3.5x"}), "--guidance expects a non-negative number, got '3.5x'"},
      {"generate", with(generate, {"--guidance", "nan"}), "--guidance expects a non-negative number, got 'nan'"},
      {"generate", with(generate, {"--height", "-5"}), "--height expects a non-negative integer, got '-5'"},
      {"generate", with(generate, {"--width", "12.5"}), "--width expects a non-negative integer, got '12.5'"},
      {"generate", with(generate, {"--seed", "-1"}), "--seed expects a non-negative integer, got '-1'"},
      {"generate", with(generate, {"--num-images-per-prompt", "0"}), "--num-images-per-prompt expects an integer"},
      {"generate", with(generate, {"--max-sequence-length", ""}), "--max-sequence-length expects an integer"},
      {"generate", with(generate, {"--dtype", "float64"}), "--dtype expects float32, bfloat16 or float16, got 'float64'"},
      {"generate", with(generate, {"--device", "tpu"}), "--device expects cpu, cuda or cuda:N, got 'tpu'"},
      {"generate", with(generate, {"--device", "cuda:x"}), "--device expects cpu, cuda or cuda:N, got 'cuda:x'"},
      {"generate", with(generate, {"--output-type", "gif"}), "--output-type expects image or latent, got 'gif'"},
      {"generate", with(generate, {"--steps"}), "--steps needs a value"},
      {"data_parallel", with(generate, {"--steps", "3x"}), "--steps expects an integer"},
      {"data_parallel", with(generate, {"--guidance", "3.5x"}), "--guidance expects a non-negative number"},
      {"data_parallel", with(generate, {"--dtype", "float64"}), "--dtype expects float32, bfloat16 or float16"},
      {"data_parallel", with(generate, {"--device", "tpu"}), "--device expects cpu, cuda or cuda:N"},
      {"context_parallel", with(generate, {"--guidance", "3.5x"}), "--guidance expects a non-negative number, got '3.5x'"},
      {"context_parallel", with(generate, {"--ring-degree", "0"}), "--ring-degree expects an integer from 1 to 65536, got '0'"},
      {"context_parallel", with(generate, {"--ulysses-degree", "two"}), "--ulysses-degree expects an integer"},
      {"context_parallel", with(generate, {"--cfg-degree", "3"}), "--cfg-degree expects an integer from 1 to 2, got '3'"},
      {"generate", with(generate, {"--cfg-degree", "0"}), "--cfg-degree expects an integer from 1 to 2, got '0'"},
      {"context_parallel", with(generate, {"--attention-backend", "fast"}), "--attention-backend: unknown attention backend 'fast'"},
      {"context_parallel", with(generate, {"--dtype", "float64"}), "--dtype expects float32, bfloat16 or float16"},
      {"model_sharding", with(generate, {"--height", "-5"}), "--height expects a non-negative integer, got '-5'"},
      {"model_sharding", with(generate, {"--seed", "1e3"}), "--seed expects a non-negative integer, got '1e3'"},
      {"model_sharding", with(generate, {"--device", "tpu"}), "--device expects cpu, cuda or cuda:N"},
      {"model_sharding", with(generate, {"--true-cfg-scale", "x"}), "--true-cfg-scale expects a non-negative number"},
      {"model_sharding", with(generate, {"--negative-prompt", "a", "--negative-prompt", "b"}),
       "one --negative-prompt only (got 2)"},
      {"device_map", {"--model", model, "--steps", "3x"}, "--steps expects an integer"},
      {"device_map", {"--model", model, "--tolerance", "abc"}, "--tolerance expects a non-negative number, got 'abc'"},
      {"device_map", {"--model", model, "--max-memory", "cuda:0"}, "--max-memory expects DEVICE=SIZE"},
      {"device_map", {"--model", model, "--max-memory", "cpu=16XB"}, "--max-memory: "},
      {"device_map", {"--model", model, "--activation-memory", "lots"}, "--activation-memory: "},
      {"device_map", {"--model", model, "--dtype", "float64"}, "--dtype expects float32, bfloat16 or float16"},
      {"make_random_pipeline", {"--output", (dir / "x").string(), "--seed", "-1"}, "--seed expects a non-negative integer"},
      {"make_random_pipeline", {"--output", (dir / "x").string(), "--shape", "flux-huge"}, "--shape expects flux-tiny, flux-dev, sd15-tiny, sd15, qwen-image-tiny or qwen-image, got 'flux-huge'"},
      {"make_random_pipeline", {"--output", (dir / "x").string(), "--dtype", "float64"}, "--dtype expects float32, bfloat16 or float16"},
      {"inspect", {model, "--jsn"}, "unknown option '--jsn'"},
      {"inspect", {}, "FOLDER is required"},
      {"diffuse-launch", {"--nproc-per-node", "1", "--grace", "abc", "true"}, "--grace expects a non-negative number, got 'abc'"},
      {"diffuse-launch", {"--nproc-per-node", "0", "true"}, "--nproc-per-node expects an integer from 1 to 1024, got '0'"},
      {"diffuse-launch", {"--nproc-per-node", "1", "--master-port", "70000", "true"}, "--master-port expects an integer from 0 to 65535"},
      {"diffuse-launch", {"--nproc-per-node", "1", "--bogus", "true"}, "unknown option '--bogus'"},
      {"diffuse-launch", {"--nproc-per-node", "1"}, "no program to start"},
  };
  for (const Case& c : cases) {
    const ProgramRun result = run(c.program, c.args, /*stderr_only=*/true);
    EXPECT_EQ(result.exit_code, 2) << c.program << ": " << result.output;
    EXPECT_EQ(result.output.rfind(c.program + ": ", 0), 0u) << result.output;
    EXPECT_NE(result.output.find(c.expected), std::string::npos) << c.program << ": " << c.expected << "\n" << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
  }
  EXPECT_TRUE(fs::is_empty(dir));
}

// --help exits 0 and teaches: the usage line, then every option with what it means and its default.
TEST(Programs, HelpListsEveryOptionWithItsDefault) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> programs = {
      {"generate", {"--model DIR", "--prompt TEXT", "--prompt-2 TEXT", "--height N", "--width N", "--round-size",
                    "--steps N", "--guidance X", "--seed N", "--max-sequence-length N", "--num-images-per-prompt N",
                    "--output-type image|latent", "--output FILE", "--latents FILE", "--save-tensors FILE",
                    "--dtype float32|bfloat16|float16", "--device cpu|cuda|cuda:N", "--quiet", "--help", "--cfg-degree N",
                    "28 for FLUX.1, 50 for SD", "3.5 for FLUX.1, 7.5 for SD", "(default out.png)", "(default: random)"}},
      {"data_parallel", {"--model DIR", "--prompt TEXT", "--prompts-file FILE", "--height N", "--width N",
                         "--round-size", "--steps N", "--guidance X", "--seed N", "--max-sequence-length N",
                         "--num-images-per-prompt N", "--output-dir DIR", "--dtype", "--device", "--quiet",
                         "cuda:LOCAL_RANK", "DIFFUSE_DIST_TIMEOUT"}},
      {"context_parallel", {"--model DIR", "--prompt TEXT", "--ring-degree N", "--ulysses-degree N", "--cfg-degree N",
                            "--attention-backend auto|", "--height N", "--width N", "--steps N", "--guidance X",
                            "--seed N", "--max-sequence-length N", "--output FILE", "--dtype", "--device", "--quiet",
                            "(default context_parallel.png)"}},
      {"model_sharding", {"--model DIR", "--prompt TEXT", "--negative-prompt TEXT", "--height N", "--width N",
                          "--steps N", "--guidance X", "--true-cfg-scale X", "--seed N", "--max-sequence-length N",
                          "--save-tensors FILE", "--dtype", "--device", "--output FILE", "StableDiffusionPipeline",
                          "QwenImagePipeline", "1024 for FLUX.1 and Qwen-Image, 512 for SD", "(default sharded.png)"}},
      {"device_map", {"--model DIR", "--max-memory", "--dtype", "--height N", "--width N", "--steps N", "--seed N",
                      "--prompt TEXT", "--activation-memory", "--tolerance X", "--skip-offload", "(default 512)",
                      "(default 4)", "StableDiffusionPipeline", "QwenImagePipeline"}},
      {"make_random_pipeline", {"--output DIR", "--shape flux-tiny|flux-dev", "--dtype", "--seed N",
                                "--tokenizers DIR", "(default flux-tiny)"}},
      {"inspect", {"FOLDER", "--json"}},
      {"diffuse-launch", {"--nproc-per-node", "--master-addr", "--master-port", "--grace SECONDS", "--no-prefix",
                          "PROGRAM [ARGS...]", "(default 5)"}},
  };
  for (const auto& [program, expected] : programs) {
    const ProgramRun help = run(program, {"--help"});
    EXPECT_EQ(help.exit_code, 0) << program << "\n" << help.output;
    EXPECT_EQ(help.output.rfind("usage: " + program, 0), 0u) << help.output;
    for (const std::string& text : expected) EXPECT_NE(help.output.find(text), std::string::npos) << program << ": " << text;
  }
}

// diffuse-launch reads its own options up to PROGRAM; the rest is PROGRAM's, untouched, even where it
// looks like the launcher's options or is malformed for them.
TEST(Programs, LauncherPassesTheProgramsArgumentsThrough) {
  // The program prints each of its arguments in brackets.
  const std::vector<std::string> program = {"/bin/sh", "-c", "for a; do echo \"[$a]\"; done", "sh"};
  std::vector<std::string> args = {"--nproc-per-node", "1", "--no-prefix", "--grace", "1"};
  args.insert(args.end(), program.begin(), program.end());
  args.insert(args.end(), {"--grace", "abc", "--steps", "3x", "--", "-h", "a b"});
  const ProgramRun result = run("diffuse-launch", args);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output, "[--grace]\n[abc]\n[--steps]\n[3x]\n[--]\n[-h]\n[a b]\n");
  // After "--", PROGRAM may be anything, and its arguments too.
  args = {"--nproc_per_node=1", "--no-prefix", "--"};
  args.insert(args.end(), program.begin(), program.end());
  args.push_back("--help");
  const ProgramRun marked = run("diffuse-launch", args);
  EXPECT_EQ(marked.exit_code, 0) << marked.output;
  EXPECT_EQ(marked.output, "[--help]\n");
}
