// model_sharding: the staged flow of diffusers' model-sharding guide, for any family diffuse runs
// (FLUX.1, Stable Diffusion, Qwen-Image; the folder's model_index.json says which). Each stage loads
// only the components it needs and frees them before the next, so that no moment holds every model:
//   1. the text components alone (tokenizer*, text_encoder*): prompts and negative prompts -> embeddings
//   2. the denoiser alone (transformer or unet): embeddings -> latents
//   3. the VAE alone: latents -> image
// The image is the one generate makes with the same arguments and seed.
//
//   model_sharding --model DIR --prompt "a cat" [--negative-prompt TEXT --height N --width N --steps N
//                  --guidance X --true-cfg-scale X --seed 0 --latents FILE --dtype bfloat16 --device cuda
//                  --output cat.png --save-tensors stages.safetensors]
//
// --save-tensors writes each stage's output: the embeddings (prompt_embeds, pooled_prompt_embeds,
// negative_prompt_embeds and the masks, as the family makes them), the final latents and the image.

#include <cstdlib>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "cli/options.hpp"
#include "diffuse/diffuse.hpp"

namespace {

namespace cli = diffuse::cli;
using cli::Gen;

struct Arguments {
  cli::ModelOptions model;
  cli::GenerationOptions generation{.seed = 0};
  std::string output = "sharded.png";
};

Arguments parse(int argc, char** argv) {
  Arguments a;
  CLI::App app(
      "Runs a pipeline folder (FluxPipeline, StableDiffusionPipeline or QwenImagePipeline, as its\n"
      "model_index.json says) in three stages, each with only its own components in memory: the text\n"
      "encoders, then the denoiser (transformer or unet), then the VAE. The image is generate's for\n"
      "the same arguments and seed.",
      "model_sharding");
  cli::init(app, "model_sharding --model DIR --prompt TEXT [options]");
  cli::add_model_options(app, a.model);
  cli::add_generation_options(app, a.generation,
                              {Gen::Prompt, Gen::NegativePrompt, Gen::Size, Gen::Steps, Gen::Guidance,
                               Gen::TrueCfgScale, Gen::Seed, Gen::MaxSequenceLength, Gen::Latents, Gen::SaveTensors});
  app.get_option("--prompt")->description("the prompt (one)")->required();
  app.get_option("--negative-prompt")->description("what the image should not show (one; SD, Qwen-Image)");
  app.get_option("--save-tensors")
      ->description(
          "also write each stage's output to this safetensors file: float32 prompt_embeds,\n"
          "pooled_prompt_embeds (FLUX.1), negative_prompt_embeds (under guidance), int64\n"
          "prompt_embeds_mask / negative_prompt_embeds_mask (Qwen-Image, padded rows),\n"
          "latents and image [1, 3, H, W] in [0, 1]");
  cli::add_text(app, "--output", a.output, "FILE", "the PNG to write");
  cli::parse(app, argc, argv);
  if (a.generation.prompts.size() > 1)
    cli::usage_error(app, "one --prompt only (got " + std::to_string(a.generation.prompts.size()) + ")");
  if (a.generation.negative_prompts.size() > 1)
    cli::usage_error(app, "one --negative-prompt only (got " + std::to_string(a.generation.negative_prompts.size()) + ")");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  const cli::GenerationOptions& generation = args.generation;
  const std::string& output = args.output;
  try {
    const std::string& model = args.model.model;
    const diffuse::StageComponents parts = diffuse::stage_components(model);
    const diffuse::PipelineOptions base{.dtype = diffuse::parse_dtype(args.model.dtype), .device = args.model.device};
    const diffuse::GenerateRequest request = generation.request();

    // 1. The text components alone.
    diffuse::PromptEmbeddings embeddings;
    {
      auto options = base;
      options.skip = parts.all_except(parts.text);
      auto encoder = diffuse::load_pipeline(model, options);
      const diffuse::EncodeRequest encode = diffuse::staged_encode_request(request, encoder->info());
      embeddings = encoder->encode_prompt(encode);
      std::cout << "1. " << encoder->class_name() << ": encoded with";
      for (const auto& name : parts.text) std::cout << " " << name;
      std::cout << ": prompt_embeds " << embeddings.prompt_embeds.sizes();
      if (embeddings.pooled_prompt_embeds.defined()) std::cout << ", pooled " << embeddings.pooled_prompt_embeds.sizes();
      if (embeddings.negative_prompt_embeds.defined())
        std::cout << ", negative " << embeddings.negative_prompt_embeds.sizes()
                  << (encode.negative_prompt.empty() ? " (of \"\")" : "");
      std::cout << "; freed\n";
    }  // the text components are freed here

    // 2. The denoiser alone, to latents; the size is the family's unless given.
    diffuse::GenerateOutput denoised;
    {
      auto options = base;
      options.skip = parts.all_except({parts.denoiser});
      auto denoiser = diffuse::load_pipeline(model, options);
      denoised = denoiser->generate(diffuse::with_embeddings(request, embeddings, diffuse::OutputType::Latent));
      std::cout << "2. denoised with " << parts.denoiser << ": latents " << denoised.latents.sizes() << " in "
                << denoised.times.denoise_seconds << " s; freed\n";
    }

    // 3. The VAE alone.
    auto options = base;
    options.skip = parts.all_except({parts.vae});
    auto decoder = diffuse::load_pipeline(model, options);
    const at::Tensor image = decoder->decode_latents(denoised.latents, denoised.height, denoised.width).to(at::kCPU);
    diffuse::images_from_tensor(image).front().save_png(output);
    std::cout << "3. decoded with " << parts.vae << ": " << output << " (" << denoised.width << "x" << denoised.height
              << ")\n";
    if (!generation.save_tensors.empty()) {
      // Each stage's output, so that a comparison with another implementation can say which stage
      // differs (scripts/compare_diffusers.py --save-tensors writes diffusers' under the same names).
      std::vector<std::pair<std::string, at::Tensor>> tensors;
      const auto keep = [&](const std::string& name, const at::Tensor& t, at::ScalarType dtype) {
        if (t.defined()) tensors.emplace_back(name, t.to(at::kCPU, dtype).contiguous());
      };
      keep("prompt_embeds", embeddings.prompt_embeds, at::kFloat);
      keep("pooled_prompt_embeds", embeddings.pooled_prompt_embeds, at::kFloat);
      keep("negative_prompt_embeds", embeddings.negative_prompt_embeds, at::kFloat);
      keep("prompt_embeds_mask", embeddings.prompt_embeds_mask, at::kLong);
      keep("negative_prompt_embeds_mask", embeddings.negative_prompt_embeds_mask, at::kLong);
      keep("latents", denoised.latents, at::kFloat);
      keep("image", image, at::kFloat);
      diffuse::save_safetensors(generation.save_tensors, tensors);
      std::cout << "tensors: " << generation.save_tensors << "\n";
    }
  } catch (const diffuse::Error& e) {
    std::cerr << "model_sharding: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "model_sharding: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}
