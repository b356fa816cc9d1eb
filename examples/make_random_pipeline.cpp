// make_random_pipeline: writes a FLUX.1-, SD 1.5- or Qwen-Image-shaped pipeline folder in diffusers' format with random
// weights, for demos, tests and benchmarks.
//
//   make_random_pipeline --shape flux-tiny --output tiny-flux
//   make_random_pipeline --shape flux-dev --dtype bfloat16 --tokenizers FLUX.1-dev --output flux-dev-random
//   make_random_pipeline --shape sd15 --dtype float16 --output sd15-random
//   make_random_pipeline --shape qwen-image --transformer-layers 20 --output qwen-image-random

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>

#include "cli/options.hpp"
#include "diffuse/diffuse.hpp"

namespace {

namespace cli = diffuse::cli;

struct Arguments {
  diffuse::RandomPipelineOptions options;
  std::string output;
  std::string dtype;       // empty: float32 for flux-tiny, bfloat16 for flux-dev
  std::string tokenizers;  // empty: made here
};

Arguments parse(int argc, char** argv) {
  Arguments a;
  CLI::App app(
      "Writes a pipeline folder in diffusers' format (model_index.json, configs, safetensors, tokenizers)\n"
      "with random weights, at a named shape.",
      "make_random_pipeline");
  cli::init(app, "make_random_pipeline --output DIR [options]");
  cli::add_text(app, "--output", a.output, "DIR", "folder to write (created; files of the same names are replaced)")
      ->required();
  cli::add_choice(app, "--shape", a.options.shape, diffuse::random_pipeline_shape_names(),
                  "flux-tiny, sd15-tiny or qwen-image-tiny (seconds on a CPU), flux-dev\n"
                  "(FLUX.1-dev's shape, 12B transformer parameters: ~33 GB in bfloat16), sd15\n"
                  "(SD 1.5's shape: ~2 GB in float16) or qwen-image (Qwen-Image's shape: a 20B\n"
                  "transformer and a 7B text encoder, ~57 GB in bfloat16)");
  cli::add_choice(app, "--dtype", a.dtype, cli::dtype_names(),
                  "weights (default: float32 for the tiny shapes, bfloat16 for flux-dev and\n"
                  "qwen-image, float16 for sd15)");
  cli::add_uint64(app, "--seed", a.options.seed, "seed of the random weights");
  cli::add_text(app, "--tokenizers", a.tokenizers, "DIR",
                "copy tokenizer/ and tokenizer_2/ from this pipeline folder (e.g. FLUX.1-dev's)\n"
                "(default: a small byte-level CLIP vocabulary and a small T5 vocabulary\n"
                "made here)");
  cli::add_int(app, "--transformer-layers", a.options.transformer_layers,
               "Qwen-Image shapes: this many transformer blocks instead of the shape's\n"
               "(60 for qwen-image; each is ~0.7 GB in bfloat16)",
               {.min = 1, .max = 1000});
  cli::parse(app, argc, argv);
  if (!a.tokenizers.empty()) a.options.tokenizers_from = a.tokenizers;
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  Arguments args = parse(argc, argv);
  diffuse::RandomPipelineOptions& options = args.options;
  const std::string& output = args.output;
  const std::string& dtype = args.dtype;
  try {
    options.dtype = !dtype.empty()                ? diffuse::parse_dtype(dtype)
                    : options.shape == "flux-dev" || options.shape == "qwen-image" ? at::kBFloat16
                    : options.shape == "sd15"     ? at::kHalf
                                                  : at::kFloat;
    const auto start = std::chrono::steady_clock::now();
    diffuse::write_random_pipeline(output, options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const diffuse::FolderSummary summary = diffuse::inspect_folder(output);
    std::cout << summary.to_text() << "wrote " << output << " in " << seconds << " s\n";
  } catch (const diffuse::Error& e) {
    std::cerr << "make_random_pipeline: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
