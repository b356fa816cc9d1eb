// make_random_pipeline: writes a FLUX.1-shaped pipeline folder in diffusers' format with random
// weights, for demos, tests and benchmarks.
//
//   make_random_pipeline --shape flux-tiny --output tiny-flux
//   make_random_pipeline --shape flux-dev --dtype bfloat16 --tokenizers FLUX.1-dev --output flux-dev-random

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>

#include "diffuse/diffuse.hpp"

namespace {

const char* kHelp = R"(usage: make_random_pipeline --output DIR [options]

Writes a pipeline folder in diffusers' format (model_index.json, configs, safetensors, tokenizers)
with random weights, at a named shape.

  --output DIR          folder to write (created; files of the same names are replaced) (required)
  --shape NAME          flux-tiny (seconds on a CPU) or flux-dev (FLUX.1-dev's shape, 12B transformer
                        parameters: ~33 GB in bfloat16) (default flux-tiny)
  --dtype TYPE          float32, bfloat16 or float16 (default float32 for flux-tiny, bfloat16 for flux-dev)
  --seed N              seed of the random weights (default 0)
  --tokenizers DIR      copy tokenizer/ and tokenizer_2/ from this pipeline folder (e.g. FLUX.1-dev's);
                        default: a small byte-level CLIP vocabulary and a small T5 vocabulary made here
  --help                this text
)";

[[noreturn]] void fail(const std::string& message) {
  std::cerr << "make_random_pipeline: " << message << "\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  diffuse::RandomPipelineOptions options;
  std::string output, dtype;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::cout << kHelp;
      return 0;
    } else if (flag == "--output") output = value();
    else if (flag == "--shape") options.shape = value();
    else if (flag == "--dtype") dtype = value();
    else if (flag == "--seed") {
      const std::string text = value();
      char* end = nullptr;
      options.seed = std::strtoull(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0') fail("--seed expects a non-negative integer, got '" + text + "'");
    } else if (flag == "--tokenizers") options.tokenizers_from = value();
    else fail("unknown option '" + flag + "' (see --help)");
  }
  if (output.empty()) fail("--output DIR is required (see --help)");
  try {
    options.dtype = !dtype.empty() ? diffuse::parse_dtype(dtype)
                                   : (options.shape == "flux-dev" ? at::kBFloat16 : at::kFloat);
    const auto start = std::chrono::steady_clock::now();
    diffuse::write_random_flux_pipeline(output, options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const diffuse::FolderSummary summary = diffuse::inspect_folder(output);
    std::cout << summary.to_text() << "wrote " << output << " in " << seconds << " s\n";
  } catch (const diffuse::Error& e) {
    std::cerr << "make_random_pipeline: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
