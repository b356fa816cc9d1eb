// make_random_pipeline: writes a FLUX.1- or SD 1.5-shaped pipeline folder in diffusers' format with random
// weights, for demos, tests and benchmarks.
//
//   make_random_pipeline --shape flux-tiny --output tiny-flux
//   make_random_pipeline --shape flux-dev --dtype bfloat16 --tokenizers FLUX.1-dev --output flux-dev-random
//   make_random_pipeline --shape sd15 --dtype float16 --output sd15-random

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
                  "flux-tiny or sd15-tiny (seconds on a CPU), flux-dev (FLUX.1-dev's shape,\n"
                  "12B transformer parameters: ~33 GB in bfloat16) or sd15 (SD 1.5's shape:\n"
                  "~2 GB in float16)");
  cli::add_choice(app, "--dtype", a.dtype, cli::dtype_names(),
                  "weights (default: float32 for the tiny shapes, bfloat16 for flux-dev,\n"
                  "float16 for sd15)");
  cli::add_uint64(app, "--seed", a.options.seed, "seed of the random weights");
  cli::add_text(app, "--tokenizers", a.tokenizers, "DIR",
                "copy tokenizer/ and tokenizer_2/ from this pipeline folder (e.g. FLUX.1-dev's)\n"
                "(default: a small byte-level CLIP vocabulary and a small T5 vocabulary\n"
                "made here)");
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
                    : options.shape == "flux-dev" ? at::kBFloat16
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
