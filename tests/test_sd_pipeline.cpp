// StableDiffusionPipeline end to end against diffusers' reference call on the tiny-sd fixture: the
// prompt embeddings, every step's latents with PNDM, the image from the prompts and the seed, each
// swapped-in scheduler's final latents, the staged path, and bad requests. Every argument is read from
// tiny-sd/reference.json.

#include <fstream>

#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/pipelines/flux_latents.hpp"
#include "diffuse/pipelines/pipeline_registry.hpp"
#include "diffuse/pipelines/random_pipeline.hpp"
#include "diffuse/pipelines/stable_diffusion_pipeline.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

fs::path tiny_sd() { return *test::fixtures_dir() / "tiny-sd"; }

const nlohmann::json& reference_json() {
  // JsonConfig reads Python's -Infinity (DPM-Solver's lambda_min_clipped) as diffusers writes it.
  static const nlohmann::json json = JsonConfig::load(tiny_sd() / "reference.json").json();
  return json;
}

const SafetensorsFile& reference() {
  static const SafetensorsFile file(tiny_sd() / "reference.safetensors");
  return file;
}

StableDiffusionPipeline tiny_pipeline(PipelineOptions options = {}) {
  options.device = test::test_device().str();
  return StableDiffusionPipeline::from_pretrained(tiny_sd() / "pipeline", std::move(options));
}

// The reference call's arguments, from reference.json.
GenerateRequest reference_request() {
  const nlohmann::json& j = reference_json();
  GenerateRequest request;
  request.prompt = j.at("prompts").get<std::vector<std::string>>();
  request.negative_prompt = j.at("negative_prompts").get<std::vector<std::string>>();
  request.height = j.at("height").get<int64_t>();
  request.width = j.at("width").get<int64_t>();
  request.num_inference_steps = j.at("num_inference_steps").get<int64_t>();
  request.guidance_scale = j.at("guidance_scale").get<double>();
  request.seed = j.at("seed").get<uint64_t>();
  request.output_type = OutputType::Tensor;
  request.progress = false;
  return request;
}

}  // namespace

TEST(StableDiffusionPipeline, LoadsByClassNameAndSkipsWhatItDoesNotRun) {
  DIFFUSE_REQUIRE_FIXTURES();
  auto pipe = load_pipeline(tiny_sd() / "pipeline", {.device = test::test_device().str()});
  EXPECT_EQ(pipe->class_name(), "StableDiffusionPipeline");
  EXPECT_EQ(pipe->info().scheduler, "PNDMScheduler");
  EXPECT_TRUE(pipe->has("unet"));
  EXPECT_ERROR_CONTAINS(pipe->has("safety_checker"), "has no component 'safety_checker'");
}

TEST(StableDiffusionPipeline, EncodePromptMatchesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  StableDiffusionPipeline pipe = tiny_pipeline({.skip = {"unet", "vae"}});
  const GenerateRequest request = reference_request();
  PromptEmbeddings embeddings = pipe.encode_prompt(
      {.prompt = request.prompt, .negative_prompt = request.negative_prompt, .do_classifier_free_guidance = true});
  EXPECT_TENSORS_CLOSE(embeddings.prompt_embeds, reference().load("prompt_embeds"), 1e-4);
  EXPECT_TENSORS_CLOSE(embeddings.negative_prompt_embeds, reference().load("negative_prompt_embeds"), 1e-4);
}

TEST(StableDiffusionPipeline, FromThePromptsAndSeedReproducesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  StableDiffusionPipeline pipe = tiny_pipeline();
  std::vector<at::Tensor> steps;
  GenerateRequest request = reference_request();
  request.output_type = OutputType::Image;
  request.callback = [&](const StepInfo& step) {
    steps.push_back(step.latents.clone());
    return true;
  };
  GenerateOutput out = pipe.generate(request);

  EXPECT_TENSORS_CLOSE(pipe.scheduler().timesteps(), reference().load("timesteps"), 0);
  // With skip_prk_steps, PLMS repeats one timestep: n steps are n + 1 UNet calls.
  int64_t calls = 0;
  while (reference().contains("latents_after_step_" + std::to_string(calls))) ++calls;
  ASSERT_EQ(static_cast<int64_t>(steps.size()), calls);
  for (size_t i = 0; i < steps.size(); ++i)
    EXPECT_TENSORS_CLOSE(steps[i], reference().load("latents_after_step_" + std::to_string(i)), 1e-4) << "step " << i;
  EXPECT_TENSORS_CLOSE(out.latents, reference().load("latents_final"), 1e-4);
  test::print_error("pipeline_output_pt", out.image_tensor, reference().load("pipeline_output_pt"));
  EXPECT_TENSORS_CLOSE(out.image_tensor, reference().load("pipeline_output_pt"), 1e-4);

  ASSERT_EQ(out.images.size(), 1u);
  const at::Tensor expected = reference().load("image_uint8");
  at::Tensor pixels =
      at::from_blob(out.images[0].pixels.data(), {1, out.images[0].height, out.images[0].width, 3}, at::kByte)
          .to(at::kInt);
  ASSERT_EQ(pixels.sizes(), expected.sizes());
  const int64_t worst = (pixels - expected.to(at::kInt)).abs().max().item<int64_t>();
  EXPECT_LE(worst, 1) << "pixels differ from diffusers' by up to " << worst << " levels";
}

TEST(StableDiffusionPipeline, GivenLatentsAndTheFirstUNetCallMatchDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  StableDiffusionPipeline pipe = tiny_pipeline();
  GenerateRequest request = reference_request();
  request.seed.reset();
  request.latents = reference().load("latents_init");
  request.output_type = OutputType::Latent;
  GenerateOutput out = pipe.generate(request);
  EXPECT_TENSORS_CLOSE(out.latents, reference().load("latents_final"), 1e-4);
  EXPECT_FALSE(out.image_tensor.defined());
  // The VAE alone on the final latents.
  EXPECT_TENSORS_CLOSE(pipe.decode_latents(out.latents), reference().load("pipeline_output_pt"), 1e-4);
}

// With the UNet replayed from a CUDA graph (the default on a GPU) the latents are the eager ones,
// bit for bit: the same kernels run on the same inputs. On the CPU both calls are eager.
TEST(StableDiffusionPipeline, CudaGraphsGiveTheEagerLatents) {
  DIFFUSE_REQUIRE_FIXTURES();
  GenerateRequest request = reference_request();
  request.output_type = OutputType::Latent;
  const at::Tensor with_graphs = tiny_pipeline().generate(request).latents;
  const at::Tensor eager = tiny_pipeline({.cuda_graphs = false}).generate(request).latents;
  EXPECT_TRUE(at::equal(with_graphs, eager)) << "max difference "
                                             << (with_graphs - eager).abs().max().item<double>();
}

TEST(StableDiffusionPipeline, EachSwappedSchedulerReproducesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  StableDiffusionPipeline pipe = tiny_pipeline();
  const nlohmann::json& j = reference_json();
  for (const auto& [key, class_name] : j.at("other_schedulers").items()) {
    SCOPED_TRACE(key);
    pipe.set_scheduler(std::shared_ptr<Scheduler>(
        make_scheduler(class_name.get<std::string>(), j.at("scheduler_config_" + key))));
    GenerateRequest request = reference_request();
    request.num_inference_steps = j.at("other_scheduler_steps").get<int64_t>();
    request.output_type = OutputType::Latent;
    GenerateOutput out = pipe.generate(request);
    EXPECT_TENSORS_CLOSE(pipe.scheduler().timesteps().to(at::kDouble),
                         reference().load(key + "_timesteps").to(at::kDouble), 0);
    test::print_error((key + "_latents_final").c_str(), out.latents, reference().load(key + "_latents_final"));
    EXPECT_TENSORS_CLOSE(out.latents, reference().load(key + "_latents_final"), 1e-4);
  }
  // By name from the current config, as diffusers' X.from_config(pipe.scheduler.config).
  pipe.set_scheduler("euler");
  EXPECT_EQ(pipe.scheduler().class_name(), "EulerDiscreteScheduler");
  EXPECT_ERROR_CONTAINS(pipe.set_scheduler("NoSuchScheduler"), "NoSuchScheduler");
}

TEST(StableDiffusionPipeline, StagedEmbeddingsGiveTheSameLatents) {
  DIFFUSE_REQUIRE_FIXTURES();
  StableDiffusionPipeline encoder = tiny_pipeline({.skip = {"unet", "vae"}});
  GenerateRequest request = reference_request();
  PromptEmbeddings embeddings = encoder.encode_prompt(
      {.prompt = request.prompt, .negative_prompt = request.negative_prompt, .do_classifier_free_guidance = true});
  StableDiffusionPipeline denoiser = tiny_pipeline({.skip = {"text_encoder", "tokenizer"}});
  request.prompt = {};
  request.negative_prompt = {};
  request.prompt_embeds = embeddings.prompt_embeds;
  request.negative_prompt_embeds = embeddings.negative_prompt_embeds;
  request.output_type = OutputType::Latent;
  EXPECT_TENSORS_CLOSE(denoiser.generate(request).latents, reference().load("latents_final"), 1e-4);
}

TEST(StableDiffusionPipeline, EachPromptOfABatchGetsItsOwnImage) {
  DIFFUSE_REQUIRE_FIXTURES();
  StableDiffusionPipeline pipe = tiny_pipeline();
  for (const double guidance : {1.0, 7.5}) {
    SCOPED_TRACE(guidance);
    GenerateRequest request = reference_request();
    request.guidance_scale = guidance;
    request.seed.reset();
    request.prompt = std::vector<std::string>{"a dog", "a cat"};
    request.negative_prompt = std::vector<std::string>{"blurry", "dark"};
    request.latents = at::randn({2, 4, *request.height / 8, *request.width / 8}, cpu_generator(3));
    request.output_type = OutputType::Latent;
    const at::Tensor both = pipe.generate(request).latents;
    request.prompt = "a cat";
    request.negative_prompt = "dark";
    request.latents = request.latents.slice(0, 1, 2);
    EXPECT_TENSORS_CLOSE(pipe.generate(request).latents, both.slice(0, 1, 2), 1e-5);
  }
}

TEST(StableDiffusionPipeline, BadRequestsNameWhatIsWrong) {
  DIFFUSE_REQUIRE_FIXTURES();
  StableDiffusionPipeline pipe = tiny_pipeline();
  GenerateRequest request = reference_request();
  request.height = 60;
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "height 60 is not a multiple of 8");
  request = reference_request();
  request.negative_prompt = std::vector<std::string>{"a", "b"};
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "negative_prompt has 2 entries but prompt has 1");
  request = reference_request();
  request.latents = at::zeros({1, 4, 3, 3});
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "latents have shape");
  request = reference_request();
  request.prompt_2 = "t5 text";
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "FLUX.1's");
  EXPECT_ERROR_CONTAINS(tiny_pipeline({.skip = {"nothing"}}), "cannot skip 'nothing'");
}

TEST(StableDiffusionPipeline, RandomSd15TinyFolderLoadsAndRunsWithEveryOffload) {
  const fs::path dir = test::temporary_folder("random_sd15_tiny");
  write_random_pipeline(dir, {.shape = "sd15-tiny", .seed = 1});
  auto pipe = load_pipeline(dir);
  EXPECT_EQ(pipe->class_name(), "StableDiffusionPipeline");
  GenerateRequest request{.prompt = "a dog", .negative_prompt = "blurry", .height = 64, .width = 64,
                          .num_inference_steps = 2, .seed = 5, .output_type = OutputType::Latent, .progress = false};
  const at::Tensor latents = pipe->generate(request).latents.cpu();
  EXPECT_EQ(latents.sizes(), (std::vector<int64_t>{1, 4, 8, 8}));
  EXPECT_TRUE(at::isfinite(latents).all().item<bool>());
  // Both offloads give the single-device latents (on a CPU-only machine the offload device is the CPU).
  // With a GPU the offloaded runs compute there, where cuDNN's convolutions round through TF32 (as
  // PyTorch allows by default): 3.5e-4 apart after two guided steps, measured on an H200.
  const double tolerance = at::hasCUDA() ? 2e-3 : 1e-4;
  pipe->enable_model_cpu_offload();
  EXPECT_TENSORS_CLOSE(pipe->generate(request).latents, latents, tolerance);
  pipe->enable_sequential_cpu_offload();
  EXPECT_TENSORS_CLOSE(pipe->generate(request).latents, latents, tolerance);
  pipe->remove_all_hooks();
  // Balanced placement over the devices there are gives the same latents too.
  auto balanced = load_pipeline(dir, {.device_map = "balanced", .max_memory = {{"cpu", "1GB"}}});
  EXPECT_TENSORS_CLOSE(balanced->generate(request).latents, latents, tolerance);
}
