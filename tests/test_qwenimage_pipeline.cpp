// QwenImagePipeline end to end against diffusers' reference call on the tiny-qwenimage fixture: the
// templated prompt embeddings (and that diffusers passes no mask when every position is valid), every
// step's latents under true CFG, the image from the prompts and the seed, the staged path, padded
// batches, and bad requests. Every argument is read from tiny-qwenimage/reference.json.

#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/pipelines/pipeline_registry.hpp"
#include "diffuse/pipelines/qwenimage_pipeline.hpp"
#include "diffuse/pipelines/random_pipeline.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

fs::path tiny_qwen() { return *test::fixtures_dir() / "tiny-qwenimage"; }

const nlohmann::json& reference_json() {
  static const nlohmann::json json = JsonConfig::load(tiny_qwen() / "reference.json").json();
  return json;
}

const SafetensorsFile& reference() {
  static const SafetensorsFile file(tiny_qwen() / "reference.safetensors");
  return file;
}

QwenImagePipeline tiny_pipeline(PipelineOptions options = {}) {
  options.device = test::test_device().str();
  return QwenImagePipeline::from_pretrained(tiny_qwen() / "pipeline", std::move(options));
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
  request.true_cfg_scale = j.at("true_cfg_scale").get<double>();
  request.max_sequence_length = j.at("max_sequence_length").get<int64_t>();
  request.seed = j.at("seed").get<uint64_t>();
  request.output_type = OutputType::Tensor;
  request.progress = false;
  return request;
}

// A mask the fixture stores as ones where diffusers passed None.
void expect_mask(const at::Tensor& mask, const char* name) {
  if (reference_json().at(std::string(name) + "_is_none").get<bool>()) {
    EXPECT_FALSE(mask.defined()) << name << ": diffusers passes no mask when every position is valid";
  } else {
    ASSERT_TRUE(mask.defined()) << name;
    EXPECT_TRUE(mask.to(at::kCPU).to(at::kLong).equal(reference().load(name).to(at::kLong))) << name;
  }
}

}  // namespace

TEST(QwenImagePipeline, LoadsByClassName) {
  DIFFUSE_REQUIRE_FIXTURES();
  auto pipe = load_pipeline(tiny_qwen() / "pipeline", {.device = test::test_device().str(), .skip = {"text_encoder"}});
  EXPECT_EQ(pipe->class_name(), "QwenImagePipeline");
  const PipelineInfo info = pipe->info();
  EXPECT_EQ(info.scheduler, "FlowMatchEulerDiscreteScheduler");
  EXPECT_EQ(info.vae_scale_factor, 4);  // 2 ** len(temperal_downsample) of the tiny VAE
  EXPECT_EQ(info.size_multiple, 8);
  EXPECT_EQ(info.default_height, 128 * 4);
  EXPECT_TRUE(info.packed_latents);
  EXPECT_TRUE(info.uses_negative_prompt);
}

TEST(QwenImagePipeline, EncodePromptMatchesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  QwenImagePipeline pipe = tiny_pipeline({.skip = {"transformer", "vae"}});
  const GenerateRequest request = reference_request();
  const PromptEmbeddings e = pipe.encode_prompt({.prompt = request.prompt,
                                                 .negative_prompt = request.negative_prompt,
                                                 .do_classifier_free_guidance = true,
                                                 .max_sequence_length = request.max_sequence_length});
  test::print_error("prompt_embeds", e.prompt_embeds, reference().load("prompt_embeds"));
  EXPECT_TENSORS_CLOSE(e.prompt_embeds, reference().load("prompt_embeds"), 1e-4);
  EXPECT_TENSORS_CLOSE(e.negative_prompt_embeds, reference().load("negative_prompt_embeds"), 1e-4);
  expect_mask(e.prompt_embeds_mask, "prompt_embeds_mask");
  expect_mask(e.negative_prompt_embeds_mask, "negative_prompt_embeds_mask");
}

TEST(QwenImagePipeline, FromThePromptsAndSeedReproducesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  QwenImagePipeline pipe = tiny_pipeline();
  std::vector<at::Tensor> steps;
  GenerateRequest request = reference_request();
  request.output_type = OutputType::Image;
  request.callback = [&](const StepInfo& step) {
    steps.push_back(step.latents.clone());
    return true;
  };
  const GenerateOutput out = pipe.generate(request);

  const auto& scheduler = dynamic_cast<const FlowMatchEulerDiscreteScheduler&>(pipe.scheduler());
  EXPECT_TENSORS_CLOSE(scheduler.timesteps(), reference().load("timesteps"), 1e-6);
  EXPECT_TENSORS_CLOSE(scheduler.sigmas(), reference().load("sigmas"), 1e-6);
  ASSERT_EQ(static_cast<int64_t>(steps.size()), *request.num_inference_steps);
  for (size_t i = 0; i < steps.size(); ++i)
    EXPECT_TENSORS_CLOSE(steps[i], reference().load("latents_after_step_" + std::to_string(i)), 1e-4) << "step " << i;
  EXPECT_TENSORS_CLOSE(out.latents, reference().load("latents_final"), 1e-4);
  test::print_error("pipeline_output_pt", out.image_tensor, reference().load("pipeline_output_pt"));
  EXPECT_TENSORS_CLOSE(out.image_tensor, reference().load("pipeline_output_pt"), 1e-4);

  ASSERT_EQ(out.images.size(), 1u);
  const at::Tensor expected = reference().load("image_uint8");
  const at::Tensor pixels =
      at::from_blob(const_cast<uint8_t*>(out.images[0].pixels.data()), {1, out.images[0].height, out.images[0].width, 3},
                    at::kByte)
          .to(at::kInt);
  ASSERT_EQ(pixels.sizes(), expected.sizes());
  const int64_t worst = (pixels - expected.to(at::kInt)).abs().max().item<int64_t>();
  EXPECT_LE(worst, 1) << "pixels differ from diffusers' by up to " << worst << " levels";
}

TEST(QwenImagePipeline, GivenLatentsTheFirstStepAndTheDecoderMatchDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  QwenImagePipeline pipe = tiny_pipeline();
  GenerateRequest request = reference_request();
  request.seed.reset();
  request.latents = reference().load("latents_init");
  request.output_type = OutputType::Latent;
  // The reference's schedule (3 steps), stopped by the callback after the first.
  std::vector<at::Tensor> steps;
  request.callback = [&](const StepInfo& step) {
    steps.push_back(step.latents.clone());
    return false;  // stop after the first step
  };
  const GenerateOutput out = pipe.generate(request);
  EXPECT_TRUE(out.interrupted);
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_TENSORS_CLOSE(steps[0], reference().load("latents_after_step_0"), 1e-4);
  EXPECT_FALSE(out.image_tensor.defined());

  const at::Tensor image = pipe.decode_latents(reference().load("latents_final"), *request.height, *request.width);
  EXPECT_TENSORS_CLOSE(image, reference().load("pipeline_output_pt"), 1e-4);
}

TEST(QwenImagePipeline, StagedEmbeddingsGiveTheSameLatents) {
  DIFFUSE_REQUIRE_FIXTURES();
  QwenImagePipeline pipe = tiny_pipeline();
  GenerateRequest request = reference_request();
  request.output_type = OutputType::Latent;
  const at::Tensor whole = pipe.generate(request).latents;

  const PromptEmbeddings e = pipe.encode_prompt({.prompt = request.prompt,
                                                 .negative_prompt = request.negative_prompt,
                                                 .do_classifier_free_guidance = true,
                                                 .max_sequence_length = request.max_sequence_length});
  GenerateRequest staged = reference_request();
  staged.output_type = OutputType::Latent;
  staged.prompt = PromptList();
  staged.negative_prompt = PromptList();
  staged.prompt_embeds = e.prompt_embeds;
  staged.prompt_embeds_mask = e.prompt_embeds_mask;
  staged.negative_prompt_embeds = e.negative_prompt_embeds;
  staged.negative_prompt_embeds_mask = e.negative_prompt_embeds_mask;
  EXPECT_TENSORS_CLOSE(pipe.generate(staged).latents, whole, 1e-6);
  EXPECT_TENSORS_CLOSE(whole, reference().load("latents_final"), 1e-4);
}

// Prompts of different lengths share a batch padded to the longest, with a mask: each image equals
// the one its prompt makes alone (and the same holds for the negative prompts).
TEST(QwenImagePipeline, APaddedBatchEqualsEachPromptAlone) {
  DIFFUSE_REQUIRE_FIXTURES();
  QwenImagePipeline pipe = tiny_pipeline();
  const std::vector<std::string> prompts = {"a photo of a dog with cat-like look", "a red house"};
  const std::vector<std::string> negatives = {"blurry, low quality", ""};
  GenerateRequest request = reference_request();
  request.output_type = OutputType::Latent;
  request.num_inference_steps = 2;
  request.prompt = prompts;
  request.negative_prompt = negatives;
  const PromptEmbeddings e = pipe.encode_prompt({.prompt = prompts,
                                                 .negative_prompt = negatives,
                                                 .do_classifier_free_guidance = true,
                                                 .max_sequence_length = request.max_sequence_length});
  ASSERT_TRUE(e.prompt_embeds_mask.defined()) << "the two prompts differ in length";
  ASSERT_TRUE(e.negative_prompt_embeds_mask.defined());
  const at::Tensor both = pipe.generate(request).latents;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest one = request;
    one.prompt = prompts[i];
    one.negative_prompt = negatives[i];
    one.seed.reset();
    one.latents = reference().load("latents_init");  // the same noise for each row
    GenerateRequest pair = request;
    pair.seed.reset();
    pair.latents = at::cat({reference().load("latents_init"), reference().load("latents_init")});
    const at::Tensor rows = pipe.generate(pair).latents;
    EXPECT_TENSORS_CLOSE(rows[static_cast<int64_t>(i)].unsqueeze(0), pipe.generate(one).latents, 1e-5) << prompts[i];
  }
  EXPECT_EQ(both.size(0), 2);
}

// With the transformer replayed from CUDA graphs (the default on a GPU: one per true-CFG pass, each
// with its own text length and mask) the latents are the eager ones, bit for bit: the same kernels run
// on the same inputs. Padded prompts, so that both passes carry a text mask. On the CPU both runs are
// eager.
TEST(QwenImagePipeline, CudaGraphsGiveTheEagerLatents) {
  DIFFUSE_REQUIRE_FIXTURES();
  GenerateRequest request = reference_request();
  request.output_type = OutputType::Latent;
  request.prompt = std::vector<std::string>{"a photo of a dog with cat-like look", "a red house"};
  request.negative_prompt = std::vector<std::string>{"blurry, low quality", ""};
  const at::Tensor with_graphs = tiny_pipeline().generate(request).latents;
  const at::Tensor eager = tiny_pipeline({.cuda_graphs = false}).generate(request).latents;
  EXPECT_TRUE(at::equal(with_graphs, eager)) << "max difference " << (with_graphs - eager).abs().max().item<double>();
}

TEST(QwenImagePipeline, NumImagesPerPromptRepeatsTheEmbeddings) {
  DIFFUSE_REQUIRE_FIXTURES();
  QwenImagePipeline pipe = tiny_pipeline();
  GenerateRequest request = reference_request();
  request.output_type = OutputType::Latent;
  request.num_inference_steps = 2;
  request.num_images_per_prompt = 2;
  const GenerateOutput out = pipe.generate(request);
  EXPECT_EQ(out.latents.size(0), 2);
  EXPECT_FALSE(out.latents[0].equal(out.latents[1])) << "each image draws its own noise";
}

TEST(QwenImagePipeline, WithoutANegativePromptTrueCfgDoesNotRun) {
  DIFFUSE_REQUIRE_FIXTURES();
  QwenImagePipeline pipe = tiny_pipeline();
  GenerateRequest request = reference_request();
  request.negative_prompt = PromptList();
  request.output_type = OutputType::Latent;
  request.num_inference_steps = 2;
  const at::Tensor without = pipe.generate(request).latents;
  request.true_cfg_scale = 1.0;  // no negative prompt and a scale of 1: the same single call
  EXPECT_TENSORS_CLOSE(pipe.generate(request).latents, without, 0);
  // An empty negative prompt is a negative prompt: true CFG runs, and the result differs.
  request.true_cfg_scale = 4.0;
  request.negative_prompt = "";
  EXPECT_FALSE(pipe.generate(request).latents.equal(without));
}

TEST(QwenImagePipeline, BadRequestsAreNamed) {
  DIFFUSE_REQUIRE_FIXTURES();
  QwenImagePipeline pipe = tiny_pipeline({.skip = {"vae"}});
  GenerateRequest request = reference_request();
  request.max_sequence_length = 1025;
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "max_sequence_length must be in [1, 1024], got 1025");
  request = reference_request();
  request.height = 60;  // not a multiple of vae_scale_factor * 2 = 8
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "height");
  request = reference_request();
  request.prompt = PromptList();
  request.negative_prompt = PromptList();
  request.prompt_embeds = at::zeros({1, 5, 7});
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "prompt_embeds have shape [1, 5, 7]");
  request.prompt_embeds = at::zeros({1, 5, 32});
  request.prompt_embeds_mask = at::ones({1, 4}, at::kLong);
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "prompt_embeds_mask has shape [1, 4]");
  request = reference_request();
  request.negative_prompt = {"a", "b", "c"};
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "negative_prompt has 3 entries but prompt has 1");
  request = reference_request();
  request.num_inference_steps = 1;  // shift_terminal's stretch needs a schedule that does not end at 1
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "use at least 2 steps");
  request = reference_request();
  request.pooled_prompt_embeds = at::zeros({1, 32});
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "takes no prompt_2 or pooled_prompt_embeds");
  request = reference_request();
  request.latents = at::zeros({1, 10, 16});
  EXPECT_ERROR_CONTAINS(pipe.generate(request), "latents have shape [1, 10, 16]");
  EXPECT_ERROR_CONTAINS(pipe.decode_latents(reference().load("latents_final"), 64, 96),
                        "component 'vae' is not loaded");
  QwenImagePipeline with_vae = tiny_pipeline({.skip = {"text_encoder", "transformer"}});
  EXPECT_ERROR_CONTAINS(with_vae.decode_latents(at::zeros({1, 95, 16}), 64, 96),
                        "decode_latents: expected packed latents");
}

// make_random_pipeline --shape qwen-image-tiny: a folder in the published layout that loads by class
// name (tokenizer and encoder agree) and generates, with and without true CFG, on every offload.
TEST(QwenImagePipeline, RandomTinyFolderLoadsAndRunsWithEveryOffload) {
  const fs::path dir = test::temporary_folder("random_qwen_image_tiny");
  write_random_pipeline(dir, {.shape = "qwen-image-tiny", .seed = 1});
  auto pipe = load_pipeline(dir);
  EXPECT_EQ(pipe->class_name(), "QwenImagePipeline");
  GenerateRequest request{.prompt = {"a dog", "a cat in the snow"}, .negative_prompt = "blurry", .height = 32,
                          .width = 48, .num_inference_steps = 2, .seed = 5, .output_type = OutputType::Latent,
                          .progress = false};
  const at::Tensor latents = pipe->generate(request).latents.cpu();
  EXPECT_EQ(latents.sizes(), (std::vector<int64_t>{2, 24, 16}));
  EXPECT_TRUE(at::isfinite(latents).all().item<bool>());
  const double tolerance = at::hasCUDA() ? 2e-3 : 1e-5;
  pipe->enable_model_cpu_offload();
  EXPECT_TENSORS_CLOSE(pipe->generate(request).latents, latents, tolerance);
  pipe->enable_sequential_cpu_offload();
  EXPECT_TENSORS_CLOSE(pipe->generate(request).latents, latents, tolerance);
  pipe->remove_all_hooks();
  request.output_type = OutputType::Image;
  const GenerateOutput out = pipe->generate(request);
  ASSERT_EQ(out.images.size(), 2u);
  EXPECT_EQ(out.images[0].width, 48);
  EXPECT_ERROR_CONTAINS(write_random_pipeline(dir, {.shape = "qwen-image-tiny", .transformer_layers = 0}),
                        "transformer_layers must be at least 1");
}
