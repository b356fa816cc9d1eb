// model_sharding: the staged flow of diffusers' model-sharding guide. Each stage loads only the
// components it needs and frees them before the next, so that no moment holds every model:
//   1. the text encoders alone: prompt -> embeddings
//   2. the transformer alone: embeddings -> latents
//   3. the VAE alone: latents -> image
//
//   model_sharding --model DIR --prompt "a cat" [--height 1024 --width 1024 --steps 28 --seed 0
//                  --dtype bfloat16 --device cuda --output cat.png]

#include <cstdlib>
#include <iostream>
#include <string>

#include "cli/options.hpp"
#include "diffuse/diffuse.hpp"

namespace {

namespace cli = diffuse::cli;
using cli::Gen;

struct Arguments {
  cli::ModelOptions model;
  cli::GenerationOptions generation{.height = 1024, .width = 1024, .seed = 0};  // the VAE stage needs the size
  std::string output = "sharded.png";
};

Arguments parse(int argc, char** argv) {
  Arguments a;
  CLI::App app(
      "Runs FLUX.1 in three stages, each with only its own components in memory:\n"
      "text encoders, then the transformer, then the VAE.",
      "model_sharding");
  cli::init(app, "model_sharding --model DIR --prompt TEXT [options]");
  cli::add_model_options(app, a.model);
  cli::add_generation_options(app, a.generation,
                              {Gen::Prompt, Gen::Size, Gen::Steps, Gen::Guidance, Gen::Seed, Gen::MaxSequenceLength});
  app.get_option("--prompt")->description("the prompt (one)")->required();
  cli::add_text(app, "--output", a.output, "FILE", "the PNG to write");
  cli::parse(app, argc, argv);
  if (a.generation.prompts.size() > 1)
    cli::usage_error(app, "one --prompt only (got " + std::to_string(a.generation.prompts.size()) + ")");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  const cli::GenerationOptions& generation = args.generation;
  const int64_t height = *generation.height, width = *generation.width;
  const std::string& output = args.output;
  try {
    const diffuse::FluxPipelineOptions base{.dtype = diffuse::parse_dtype(args.model.dtype),
                                            .device = args.model.device};
    const std::string& model = args.model.model;
    const std::vector<std::string> text_parts = {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"};

    // 1. Text encoders only.
    diffuse::PromptEmbeddings embeddings;
    {
      auto options = base;
      options.skip = {"transformer", "vae"};
      auto encoder = diffuse::FluxPipeline::from_pretrained(model, options);
      embeddings = encoder.encode_prompt({.prompt = generation.prompts,
                                          .max_sequence_length = generation.max_sequence_length});
      std::cout << "1. encoded: prompt_embeds " << embeddings.prompt_embeds.sizes() << ", pooled "
                << embeddings.pooled_prompt_embeds.sizes() << "; text encoders freed\n";
    }  // the text encoders are freed here

    // 2. The transformer alone, to latents.
    at::Tensor latents;
    {
      auto options = base;
      options.skip = text_parts;
      options.skip.push_back("vae");
      auto denoiser = diffuse::FluxPipeline::from_pretrained(model, options);
      diffuse::GenerateRequest request = generation.request();
      request.prompt = {};
      request.prompt_embeds = embeddings.prompt_embeds;
      request.pooled_prompt_embeds = embeddings.pooled_prompt_embeds;
      request.output_type = diffuse::OutputType::Latent;
      auto out = denoiser.generate(request);
      latents = out.latents;
      std::cout << "2. denoised: latents " << latents.sizes() << " in " << out.times.denoise_seconds
                << " s; transformer freed\n";
    }

    // 3. The VAE alone.
    auto options = base;
    options.skip = text_parts;
    options.skip.push_back("transformer");
    auto decoder = diffuse::FluxPipeline::from_pretrained(model, options);
    const auto images = diffuse::images_from_tensor(decoder.decode_latents(latents, height, width));
    images.front().save_png(output);
    std::cout << "3. decoded: " << output << " (" << width << "x" << height << ")\n";
  } catch (const diffuse::Error& e) {
    std::cerr << "model_sharding: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
