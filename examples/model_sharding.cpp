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

#include "diffuse/diffuse.hpp"

namespace {

[[noreturn]] void fail(const std::string& message) {
  std::cerr << "model_sharding: " << message << "\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, prompt, output = "sharded.png", dtype = "float32", device = "cpu";
  int64_t height = 1024, width = 1024, steps = 28, max_sequence_length = 512;
  uint64_t seed = 0;
  double guidance = 3.5;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::cout << "usage: model_sharding --model DIR --prompt TEXT [--height N] [--width N] [--steps N]\n"
                   "       [--guidance X] [--seed N] [--max-sequence-length N] [--dtype T] [--device D] [--output FILE]\n\n"
                   "Runs FLUX.1 in three stages, each with only its own components in memory:\n"
                   "text encoders, then the transformer, then the VAE.\n";
      return 0;
    } else if (flag == "--model") model = value();
    else if (flag == "--prompt") prompt = value();
    else if (flag == "--height") height = std::atoll(value().c_str());
    else if (flag == "--width") width = std::atoll(value().c_str());
    else if (flag == "--steps") steps = std::atoll(value().c_str());
    else if (flag == "--guidance") guidance = std::atof(value().c_str());
    else if (flag == "--seed") seed = std::strtoull(value().c_str(), nullptr, 10);
    else if (flag == "--max-sequence-length") max_sequence_length = std::atoll(value().c_str());
    else if (flag == "--dtype") dtype = value();
    else if (flag == "--device") device = value();
    else if (flag == "--output") output = value();
    else fail("unknown option '" + flag + "' (see --help)");
  }
  if (model.empty() || prompt.empty()) fail("--model and --prompt are required (see --help)");

  try {
    const diffuse::FluxPipelineOptions base{.dtype = diffuse::parse_dtype(dtype), .device = device};
    const std::vector<std::string> text_parts = {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"};

    // 1. Text encoders only.
    diffuse::PromptEmbeddings embeddings;
    {
      auto options = base;
      options.skip = {"transformer", "vae"};
      auto encoder = diffuse::FluxPipeline::from_pretrained(model, options);
      embeddings = encoder.encode_prompt({.prompt = prompt, .max_sequence_length = max_sequence_length});
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
      auto out = denoiser.generate({.prompt_embeds = embeddings.prompt_embeds,
                                    .pooled_prompt_embeds = embeddings.pooled_prompt_embeds,
                                    .height = height,
                                    .width = width,
                                    .num_inference_steps = steps,
                                    .guidance_scale = guidance,
                                    .seed = seed,
                                    .output_type = diffuse::OutputType::Latent});
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
