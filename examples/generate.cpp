// generate: prompt in, PNG out, with a FLUX.1 pipeline folder in diffusers' format.
//
//   generate --model DIR --prompt "a cat" [--prompt "a dog" ...] --output cat.png
//
// --help lists every option with its default.

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/diffuse.hpp"
#include "cli/options.hpp"

namespace {

namespace cli = diffuse::cli;
using cli::Gen;

struct Arguments {
  cli::ModelOptions model;
  cli::GenerationOptions generation;
  std::string output = "out.png";
  bool quiet = false;
};

Arguments parse(int argc, char** argv) {
  Arguments a;
  CLI::App app(
      "Generates images with a FLUX.1 pipeline folder in diffusers' format (model_index.json and its\n"
      "component folders), the same images diffusers' FluxPipeline makes for the same arguments and seed.",
      "generate");
  cli::init(app, "generate --model DIR --prompt TEXT [options]");
  cli::add_model_options(app, a.model);
  cli::add_generation_options(app, a.generation,
                              {Gen::Prompt, Gen::Prompt2, Gen::Size, Gen::RoundSize, Gen::Steps, Gen::Guidance,
                               Gen::Seed, Gen::MaxSequenceLength, Gen::ImagesPerPrompt, Gen::OutputType,
                               Gen::Latents, Gen::SaveTensors});
  app.get_option("--prompt")->required();
  cli::add_text(app, "--output", a.output, "FILE", "PNG path; with several images, FILE's stem gets _0, _1, ...");
  cli::add_quiet_option(app, a.quiet);
  cli::parse(app, argc, argv);
  return a;
}

// out.png -> out_0.png, out_1.png, ... when there are several images.
std::filesystem::path image_path(const std::filesystem::path& output, size_t index, size_t count) {
  if (count == 1) return output;
  std::filesystem::path path = output;
  path.replace_filename(output.stem().string() + "_" + std::to_string(index) + output.extension().string());
  return path;
}

}  // namespace

int main(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  try {
    if (args.quiet) diffuse::set_log_level("warn");
    const cli::GenerationOptions& generation = args.generation;
    diffuse::GenerateRequest request = generation.request();
    if (args.quiet) request.progress = false;
    if (!generation.latents_file.empty()) {
      diffuse::SafetensorsFile file(generation.latents_file);
      if (!file.contains("latents")) throw diffuse::Error(generation.latents_file + ": no tensor named 'latents'");
      request.latents = file.load("latents", at::kFloat);
    }
    // Check the output paths before the work, so that a typo costs nothing.
    for (const std::string& path : {args.output, generation.save_tensors}) {
      if (path.empty()) continue;
      const auto parent = std::filesystem::path(path).parent_path();
      if (!parent.empty() && !std::filesystem::is_directory(parent))
        throw diffuse::Error(path + ": cannot write: folder '" + parent.string() + "' does not exist");
    }

    const auto load_start = std::chrono::steady_clock::now();
    diffuse::FluxPipelineOptions options;
    options.dtype = diffuse::parse_dtype(args.model.dtype);
    options.device = args.model.device;
    if (request.output_type == diffuse::OutputType::Latent) options.skip = {"vae"};
    diffuse::FluxPipeline pipe = diffuse::FluxPipeline::from_pretrained(args.model.model, options);
    const double load_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

    diffuse::GenerateOutput out = pipe.generate(request);

    if (!generation.save_tensors.empty() || request.output_type == diffuse::OutputType::Latent) {
      std::vector<std::pair<std::string, at::Tensor>> tensors = {{"latents", out.latents.to(at::kCPU, at::kFloat)}};
      if (out.image_tensor.defined()) tensors.emplace_back("image", out.image_tensor.to(at::kFloat));
      std::string path = generation.save_tensors;
      if (path.empty()) path = std::filesystem::path(args.output).replace_extension(".safetensors").string();
      diffuse::save_safetensors(path, tensors);
      std::cout << "tensors: " << path << "\n";
    }
    for (size_t i = 0; i < out.images.size(); ++i) {
      const auto path = image_path(args.output, i, out.images.size());
      out.images[i].save_png(path);
      std::cout << "image: " << path.string() << " (" << out.width << "x" << out.height << ")\n";
    }
    if (!args.quiet)
      std::cerr << "times: load " << load_seconds << " s, encode " << out.times.encode_seconds << " s, denoise "
                << out.times.denoise_seconds << " s (" << generation.steps << " steps), decode " << out.times.decode_seconds
                << " s, total " << out.times.total_seconds << " s\n";
  } catch (const diffuse::Error& e) {
    std::cerr << "generate: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "generate: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}
