// FluxPipeline end to end against diffusers' reference call on the tiny-flux fixture, the staged
// (model sharding) path, bad requests, and pipelines made with random weights.

#include <fstream>

#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/pipelines/flux_pipeline.hpp"
#include "diffuse/pipelines/random_pipeline.hpp"
#include "diffuse/tokenizers/t5_tokenizer.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

FluxPipeline tiny_pipeline(FluxPipelineOptions options = {}) {
  options.device = test::test_device().str();
  return FluxPipeline::from_pretrained(test::tiny_flux_pipeline(), std::move(options));
}

}  // namespace

TEST(FluxPipeline, FromThePromptAloneReproducesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  FluxPipeline pipe = tiny_pipeline();
  std::vector<at::Tensor> steps;
  GenerateRequest request = test::reference_request();
  request.output_type = OutputType::Image;
  request.callback = [&](const StepInfo& step) {
    steps.push_back(step.latents.clone());
    return true;
  };
  GenerateOutput out = pipe.generate(request);
  const SafetensorsFile& reference = test::tiny_flux_reference();

  ASSERT_EQ(steps.size(), 4u);
  for (size_t i = 0; i < steps.size(); ++i)
    EXPECT_TENSORS_CLOSE(steps[i], reference.load("latents_after_step_" + std::to_string(i)), 1e-4) << "step " << i;
  EXPECT_TENSORS_CLOSE(out.latents, reference.load("latents_final"), 1e-4);
  std::cout << "pipeline_output_pt: max relative error "
            << test::relative_error(out.image_tensor, reference.load("pipeline_output_pt")) << "\n";
  EXPECT_TENSORS_CLOSE(out.image_tensor, reference.load("pipeline_output_pt"), 1e-4);

  ASSERT_EQ(out.images.size(), 1u);
  EXPECT_EQ(out.images[0].width, 96);
  EXPECT_EQ(out.images[0].height, 64);
  at::Tensor pixels = at::from_blob(out.images[0].pixels.data(), {1, 64, 96, 3}, at::kByte).to(at::kInt);
  const int64_t worst = (pixels - reference.load("image_uint8").to(at::kInt)).abs().max().item<int64_t>();
  EXPECT_LE(worst, 1) << "pixels differ from diffusers' by up to " << worst << " levels";
  EXPECT_GT(out.times.total_seconds, 0);
  // On CUDA the denoising loop ran with q/k/v fused (one GEMM per stream); elsewhere it never fuses.
  EXPECT_EQ(pipe.transformer()->qkv_projections_fused(), test::test_device().is_cuda());
}

TEST(FluxPipeline, EncodePromptMatchesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  FluxPipeline pipe = tiny_pipeline({.skip = {"transformer", "vae"}});
  const GenerateRequest request = test::reference_request();
  PromptEmbeddings embeddings = pipe.encode_prompt({.prompt = request.prompt, .max_sequence_length = 32});
  const SafetensorsFile& reference = test::tiny_flux_reference();
  EXPECT_TENSORS_CLOSE(embeddings.prompt_embeds, reference.load("prompt_embeds"), 1e-4);
  EXPECT_TENSORS_CLOSE(embeddings.pooled_prompt_embeds, reference.load("pooled_prompt_embeds"), 1e-4);
  EXPECT_TRUE(at::equal(embeddings.text_ids.cpu(), reference.load("text_ids")));
}

TEST(FluxPipeline, StagedPathGivesTheSameLatentsAsOneCall) {
  DIFFUSE_REQUIRE_FIXTURES();
  const GenerateRequest request = test::reference_request();
  GenerateOutput whole = tiny_pipeline().generate(request);

  // Stage 1: text encoders only.
  PromptEmbeddings embeddings;
  {
    FluxPipeline encoder = tiny_pipeline({.skip = {"transformer", "vae"}});
    EXPECT_FALSE(encoder.has("transformer"));
    embeddings = encoder.encode_prompt({.prompt = request.prompt, .max_sequence_length = request.max_sequence_length});
  }
  // Stage 2: the transformer alone, to latents.
  at::Tensor latents;
  {
    FluxPipeline denoiser = tiny_pipeline({.skip = {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"}});
    GenerateRequest staged = request;
    staged.prompt = PromptList();
    staged.prompt_embeds = embeddings.prompt_embeds;
    staged.pooled_prompt_embeds = embeddings.pooled_prompt_embeds;
    staged.output_type = OutputType::Latent;
    GenerateOutput out = denoiser.generate(staged);
    EXPECT_FALSE(out.image_tensor.defined());
    latents = out.latents;
  }
  EXPECT_TRUE(at::equal(latents.cpu(), whole.latents.cpu()));
  // Stage 3: the VAE alone.
  FluxPipeline decoder = tiny_pipeline({.skip = {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer"}});
  at::Tensor image = decoder.decode_latents(latents, *request.height, *request.width);
  EXPECT_TENSORS_CLOSE(image, test::tiny_flux_reference().load("pipeline_output_pt"), 1e-4);
}

TEST(FluxPipeline, BatchesAndImagesPerPromptKeepEachPromptsImagesTogether) {
  DIFFUSE_REQUIRE_FIXTURES();
  FluxPipeline pipe = tiny_pipeline();
  GenerateRequest request = test::reference_request();
  request.prompt = {"a red cat", "a blue dog"};
  request.num_images_per_prompt = 2;
  request.num_inference_steps = 2;
  request.output_type = OutputType::Image;
  GenerateOutput out = pipe.generate(request);
  ASSERT_EQ(out.images.size(), 4u);
  EXPECT_EQ(out.latents.size(0), 4);
  // Images 0 and 1 share prompt 0 but not noise.
  EXPECT_FALSE(at::equal(out.latents[0], out.latents[1]));
  PromptEmbeddings e = pipe.encode_prompt({.prompt = request.prompt, .num_images_per_prompt = 2, .max_sequence_length = 32});
  EXPECT_TRUE(at::equal(e.prompt_embeds[0], e.prompt_embeds[1]));
  EXPECT_FALSE(at::equal(e.prompt_embeds[1], e.prompt_embeds[2]));
}

TEST(FluxPipeline, GivenLatentsAreUsedAndACallbackCanStopTheLoop) {
  DIFFUSE_REQUIRE_FIXTURES();
  FluxPipeline pipe = tiny_pipeline();
  GenerateRequest request = test::reference_request();
  request.seed.reset();
  request.latents = test::tiny_flux_reference().load("latents_init");
  request.output_type = OutputType::Latent;
  int calls = 0;
  request.callback = [&](const StepInfo& step) { return ++calls < 1; };
  GenerateOutput out = pipe.generate(request);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(out.interrupted);
  EXPECT_TENSORS_CLOSE(out.latents, test::tiny_flux_reference().load("latents_after_step_0"), 1e-4);
}

TEST(FluxPipeline, BadRequestsGiveClearErrors) {
  DIFFUSE_REQUIRE_FIXTURES();
  FluxPipeline pipe = tiny_pipeline();
  GenerateRequest request = test::reference_request();

  GenerateRequest bad = request;
  bad.height = 72;
  EXPECT_ERROR_CONTAINS(pipe.generate(bad), "height 72 is not a multiple of 16");
  bad.round_size = true;  // rounded down as diffusers does
  bad.num_inference_steps = 1;
  EXPECT_EQ(pipe.generate(bad).image_tensor.size(2), 64);

  bad = request;
  bad.width = 0;
  EXPECT_ERROR_CONTAINS(pipe.generate(bad), "width must be at least 16");

  bad = request;
  bad.prompt = std::vector<std::string>{};
  EXPECT_ERROR_CONTAINS(pipe.generate(bad), "give a prompt");

  bad = request;
  bad.prompt_embeds = at::zeros({1, 32, 32});
  bad.pooled_prompt_embeds = at::zeros({1, 32});
  EXPECT_ERROR_CONTAINS(pipe.generate(bad), "either prompt or prompt_embeds");

  bad.prompt = PromptList();
  bad.prompt_embeds = at::zeros({1, 32, 48});
  EXPECT_ERROR_CONTAINS(pipe.generate(bad), "prompt_embeds have shape [1, 32, 48]");
  bad.prompt_embeds = at::zeros({1, 32, 32});
  bad.pooled_prompt_embeds = at::zeros({1, 16});
  EXPECT_ERROR_CONTAINS(pipe.generate(bad), "pooled_prompt_embeds have shape [1, 16]");
  bad.pooled_prompt_embeds = at::Tensor();
  EXPECT_ERROR_CONTAINS(pipe.generate(bad), "give both");

  bad = request;
  bad.latents = at::zeros({1, 20, 16});
  EXPECT_ERROR_CONTAINS(pipe.generate(bad), "latents have shape [1, 20, 16]");

  bad = request;
  bad.max_sequence_length = 1000;
  EXPECT_ERROR_CONTAINS(pipe.generate(bad), "max_sequence_length");

  FluxPipeline encoder_only = tiny_pipeline({.skip = {"transformer"}});
  EXPECT_ERROR_CONTAINS(encoder_only.generate(request), "component 'transformer' is not loaded");
  EXPECT_ERROR_CONTAINS(tiny_pipeline({.skip = {"unet"}}), "no such component");
}

TEST(FluxPipeline, FolderProblemsNameTheComponent) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::temporary_folder("pipeline_missing_component");
  fs::copy(test::tiny_flux_pipeline(), dir, fs::copy_options::recursive);
  fs::remove_all(dir / "vae");
  EXPECT_ERROR_CONTAINS(FluxPipeline::from_pretrained(dir), "component folder 'vae' is missing");

  std::ifstream in(dir / "model_index.json");
  std::string index((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  index.replace(index.find("\"AutoencoderKL\""), 15, "\"AutoencoderTiny\"");
  std::ofstream(dir / "model_index.json") << index;
  EXPECT_ERROR_CONTAINS(FluxPipeline::from_pretrained(dir), "has class AutoencoderTiny");
  EXPECT_ERROR_CONTAINS(FluxPipeline::from_pretrained(dir / "nowhere"), "no model_index.json");
}

TEST(RandomPipeline, FluxTinyWithItsOwnVocabularyGeneratesAnImage) {
  const fs::path dir = test::temporary_folder("random_flux_tiny");
  write_random_flux_pipeline(dir, {.shape = "flux-tiny", .seed = 7});
  for (const char* file : {"model_index.json", "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer_2/spiece.model",
                           "transformer/diffusion_pytorch_model.safetensors", "vae/config.json", "text_encoder/model.safetensors"})
    EXPECT_TRUE(fs::exists(dir / file)) << file;
  FluxPipeline pipe = FluxPipeline::from_pretrained(dir);
  GenerateOutput out = pipe.generate({.prompt = "a photo of a cat, 4k!", .height = 32, .width = 48,
                                      .num_inference_steps = 2, .seed = 1, .max_sequence_length = 16,
                                      .progress = false});
  ASSERT_EQ(out.images.size(), 1u);
  EXPECT_EQ(out.images[0].width, 48);
  EXPECT_EQ(out.images[0].height, 32);
  EXPECT_TRUE(at::isfinite(out.image_tensor).all().item<bool>());
  // Same seed, same image.
  GenerateOutput again = pipe.generate({.prompt = "a photo of a cat, 4k!", .height = 32, .width = 48,
                                        .num_inference_steps = 2, .seed = 1, .max_sequence_length = 16,
                                        .progress = false});
  EXPECT_EQ(out.images[0].pixels, again.images[0].pixels);
}

TEST(RandomPipeline, CopiesTokenizersWhenAsked) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::temporary_folder("random_flux_tiny_tokenizers");
  write_random_flux_pipeline(dir, {.shape = "flux-tiny", .tokenizers_from = test::tiny_flux_pipeline()});
  EXPECT_TRUE(fs::exists(dir / "tokenizer" / "tokenizer.json"));
  EXPECT_EQ(T5Config::from_file(dir / "text_encoder_2" / "config.json").vocab_size, 1100);
  EXPECT_ERROR_CONTAINS(write_random_flux_pipeline(dir, {.shape = "flux-huge"}), "unknown pipeline shape 'flux-huge'");
}

// Issue 18: transformers' T5TokenizerFast cannot convert a spiece.model without a precompiled
// charsmap ("Cannot parse precompiled_charsmap"), so the random T5 tokenizer is also written as the
// `tokenizers` library's tokenizer.json. Its vocabulary must be spiece.model's, id for id
// (scripts/check_random_pipelines.py loads the folders in transformers and diffusers on the GPU machine).
TEST(RandomPipeline, T5TokenizerIsAlsoWrittenAsTokenizersJsonWithTheSameIds) {
  const fs::path dir = test::temporary_folder("random_flux_tiny_t5_json");
  write_random_flux_pipeline(dir, {.shape = "flux-tiny"});
  const fs::path folder = dir / "tokenizer_2";
  ASSERT_TRUE(fs::exists(folder / "tokenizer.json")) << "transformers needs tokenizer.json for this T5 model";
  nlohmann::json tokenizer_json;
  std::ifstream(folder / "tokenizer.json") >> tokenizer_json;
  const auto& model = tokenizer_json["model"];
  EXPECT_EQ(model["type"], "Unigram");
  const T5Tokenizer t5 = T5Tokenizer::from_pretrained(folder);
  EXPECT_EQ(model["unk_id"].get<int64_t>(), t5.unk_id);
  const auto& vocab = model["vocab"];
  ASSERT_EQ(static_cast<int64_t>(vocab.size()) + 100, t5.vocab_size());  // + the extra ids
  EXPECT_EQ(vocab[t5.pad_id][0], "<pad>");
  EXPECT_EQ(vocab[t5.eos_id][0], "</s>");
  // Every piece of the JSON has its id in spiece.model, and the extra ids are numbered alike.
  for (int64_t id = 0; id < static_cast<int64_t>(vocab.size()); ++id)
    ASSERT_EQ(t5.token_to_id(vocab[id][0].get<std::string>()), id) << vocab[id][0];
  for (const auto& added : tokenizer_json["added_tokens"])
    EXPECT_EQ(t5.token_to_id(added["content"].get<std::string>()), added["id"].get<int64_t>()) << added["content"];
  // A prompt's ids read back through the JSON's vocabulary give the prompt.
  const std::vector<int64_t> ids = t5.encode("a photo of a cat");
  std::string text;
  for (int64_t id : ids) text += id == t5.eos_id ? "" : vocab[id][0].get<std::string>();
  const std::string space = "\xE2\x96\x81";  // U+2581, SentencePiece's word start
  EXPECT_EQ(text, space + "a" + space + "photo" + space + "of" + space + "a" + space + "cat");
}

TEST(RandomPipeline, FluxDevShapeIsFlux1DevsShape) {
  const FluxShape shape = flux_shape("flux-dev");
  EXPECT_EQ(shape.transformer.num_layers, 19);
  EXPECT_EQ(shape.transformer.num_single_layers, 38);
  EXPECT_EQ(shape.transformer.inner_dim(), 3072);
  EXPECT_EQ(shape.transformer.in_channels, 64);
  EXPECT_EQ(shape.text_encoder_2.d_model, 4096);
  EXPECT_EQ(shape.text_encoder.hidden_size, 768);
  EXPECT_EQ(shape.vae.latent_channels, 16);
  EXPECT_EQ(shape.vae.vae_scale_factor(), 8);
}
