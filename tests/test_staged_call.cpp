// One call in stages through DiffusionPipeline& alone (pipelines/staged_call.hpp): the stage components
// read from model_index.json, when each family encodes negative prompts, and the staged call equal to
// the one call on every fixture.

#include <fstream>

#include "diffuse/io/json_config.hpp"
#include "diffuse/pipelines/pipeline_registry.hpp"
#include "diffuse/pipelines/staged_call.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

// A fixture's reference call, from its reference.json, as a request (one image, latents out of stage 2).
GenerateRequest fixture_request(const std::string& fixture) {
  const JsonConfig args = JsonConfig::load(*test::fixtures_dir() / fixture / "reference.json");
  GenerateRequest r;
  r.prompt = args.get_string_list("prompts", {});
  r.negative_prompt = args.get_string_list("negative_prompts", {});
  r.height = args.get_int("height", 0);
  r.width = args.get_int("width", 0);
  r.num_inference_steps = args.get_int("num_inference_steps", 0);
  r.guidance_scale = args.get_optional_double("guidance_scale");
  r.true_cfg_scale = args.get_optional_double("true_cfg_scale");
  r.max_sequence_length = args.get_int("max_sequence_length", r.max_sequence_length);
  r.seed = static_cast<uint64_t>(args.get_int("seed", 0));
  r.output_type = OutputType::Tensor;
  r.progress = false;
  return r;
}

fs::path pipeline_folder(const std::string& fixture) { return *test::fixtures_dir() / fixture / "pipeline"; }

}  // namespace

TEST(StagedCall, StageComponentsComeFromModelIndex) {
  DIFFUSE_REQUIRE_FIXTURES();
  const StageComponents flux = stage_components(pipeline_folder("tiny-flux"));
  EXPECT_EQ(flux.text, (std::vector<std::string>{"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"}));
  EXPECT_EQ(flux.denoiser, "transformer");
  EXPECT_EQ(flux.vae, "vae");
  EXPECT_EQ(flux.all_except(flux.text), (std::vector<std::string>{"transformer", "vae"}));
  EXPECT_EQ(flux.all_except({"vae"}),
            (std::vector<std::string>{"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer"}));
  const StageComponents sd = stage_components(pipeline_folder("tiny-sd"));
  EXPECT_EQ(sd.text, (std::vector<std::string>{"text_encoder", "tokenizer"}));
  EXPECT_EQ(sd.denoiser, "unet");
  EXPECT_EQ(stage_components(pipeline_folder("tiny-qwenimage")).denoiser, "transformer");

  const fs::path dir = test::temporary_folder("staged_call_index");
  EXPECT_ERROR_CONTAINS(stage_components(dir), "no model_index.json");
  std::ofstream(dir / "model_index.json") << R"({"_class_name": "X", "text_encoder": ["transformers", "CLIPTextModel"],
                                                 "vae": ["diffusers", "AutoencoderKL"]})";
  EXPECT_ERROR_CONTAINS(stage_components(dir), "neither a 'transformer' nor a 'unet'");
}

// Each family's rule, from PipelineInfo alone.
TEST(StagedCall, NegativeEmbeddingsExactlyWhenGenerateUsesThem) {
  const PipelineInfo flux{.class_name = "FluxPipeline", .default_guidance_scale = 3.5};
  const PipelineInfo sd{.class_name = "StableDiffusionPipeline", .uses_negative_prompt = true,
                        .empty_negative_prompt = true};
  const PipelineInfo qwen{.class_name = "QwenImagePipeline", .default_guidance_scale = 4, .uses_negative_prompt = true,
                          .true_cfg = true, .default_true_cfg_scale = 4};
  GenerateRequest plain;
  plain.prompt = "a cat";
  GenerateRequest negative = plain;
  negative.negative_prompt = "blurry";

  EXPECT_FALSE(uses_negative_embeddings(flux, plain));
  EXPECT_TRUE(uses_negative_embeddings(sd, plain));  // "" under classifier-free guidance (7.5 > 1)
  EXPECT_TRUE(uses_negative_embeddings(sd, negative));
  GenerateRequest unguided = negative;
  unguided.guidance_scale = 1.0;
  EXPECT_FALSE(uses_negative_embeddings(sd, unguided));
  EXPECT_FALSE(uses_negative_embeddings(qwen, plain));  // true CFG only with a given negative prompt
  EXPECT_TRUE(uses_negative_embeddings(qwen, negative));
  GenerateRequest no_cfg = negative;
  no_cfg.true_cfg_scale = 1.0;
  EXPECT_FALSE(uses_negative_embeddings(qwen, no_cfg));
  no_cfg.guidance_scale = 7.5;  // not Qwen-Image's scale
  EXPECT_FALSE(uses_negative_embeddings(qwen, no_cfg));

  const EncodeRequest encode = staged_encode_request(negative, sd);
  EXPECT_TRUE(encode.do_classifier_free_guidance);
  EXPECT_EQ(encode.negative_prompt.items(), std::vector<std::string>{"blurry"});
  EXPECT_EQ(encode.num_images_per_prompt, 1);
  EXPECT_ERROR_CONTAINS(staged_encode_request(negative, flux), "FluxPipeline takes no negative prompt");
  EXPECT_ERROR_CONTAINS(staged_encode_request(no_cfg, sd), "StableDiffusionPipeline takes no true_cfg_scale");

  PromptEmbeddings e;
  e.prompt_embeds = at::ones({1, 2, 3});
  e.negative_prompt_embeds = at::zeros({1, 2, 3});
  const GenerateRequest staged = with_embeddings(negative, e);
  EXPECT_TRUE(staged.prompt.empty());
  EXPECT_TRUE(staged.negative_prompt.empty());
  EXPECT_TRUE(staged.prompt_embeds.equal(e.prompt_embeds));
  EXPECT_TRUE(staged.negative_prompt_embeds.equal(e.negative_prompt_embeds));
  EXPECT_FALSE(staged.pooled_prompt_embeds.defined());
  EXPECT_EQ(staged.output_type, OutputType::Latent);
}

// The three stages, each a pipeline with only its components, through DiffusionPipeline& alone, give
// the one call's latents and image on every family; a second image per prompt is repeated in stage 2
// as generate repeats it.
TEST(StagedCall, EqualsTheOneCallOnEveryFamily) {
  DIFFUSE_REQUIRE_FIXTURES();
  for (const std::string fixture : {"tiny-flux", "tiny-sd", "tiny-qwenimage"}) {
    SCOPED_TRACE(fixture);
    const fs::path folder = pipeline_folder(fixture);
    const StageComponents parts = stage_components(folder);
    GenerateRequest request = fixture_request(fixture);
    request.num_images_per_prompt = 2;
    const GenerateOutput whole = load_pipeline(folder)->generate(request);

    std::unique_ptr<DiffusionPipeline> encoder = load_pipeline(folder, {.skip = parts.all_except(parts.text)});
    const PromptEmbeddings e = encoder->encode_prompt(staged_encode_request(request, encoder->info()));
    encoder.reset();
    const GenerateOutput denoised =
        load_pipeline(folder, {.skip = parts.all_except({parts.denoiser})})->generate(with_embeddings(request, e));
    EXPECT_FALSE(denoised.image_tensor.defined());
    std::unique_ptr<DiffusionPipeline> decoder = load_pipeline(folder, {.skip = parts.all_except({parts.vae})});
    const at::Tensor image = decoder->decode_latents(denoised.latents, denoised.height, denoised.width);

    EXPECT_EQ(denoised.latents.size(0), 2);
    test::print_error((fixture + " staged latents").c_str(), denoised.latents, whole.latents);
    test::print_error((fixture + " staged image").c_str(), image, whole.image_tensor);
    EXPECT_TENSORS_CLOSE(denoised.latents, whole.latents, 1e-5);
    EXPECT_TENSORS_CLOSE(image, whole.image_tensor, 1e-5);
    // Latents of another size are refused, naming the size.
    EXPECT_ERROR_CONTAINS(decoder->decode_latents(denoised.latents, denoised.height * 2, denoised.width),
                          std::to_string(denoised.height * 2) + "x" + std::to_string(denoised.width) + " image");
  }
}
