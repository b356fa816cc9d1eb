// context_parallel: one image over the processes (one per GPU): its tokens split (ring, Ulysses; FLUX.1,
// Qwen-Image), and/or its two guidance passes on two halves of the processes (CFG; SD, Qwen-Image).
// The family comes from the folder's model_index.json.
//
//   diffuse-launch --nproc-per-node 4 context_parallel --model DIR --prompt "a cat" --ulysses-degree 4 \
//       --dtype bfloat16 --seed 0 --output cat.png
//   torchrun --no-python --nproc-per-node 4 context_parallel --model DIR --prompt "a cat" \
//       --ring-degree 2 --ulysses-degree 2 --output cat.png
//   diffuse-launch --nproc-per-node 4 context_parallel --model Qwen-Image --prompt "a cat" \
//       --negative-prompt " " --cfg-degree 2 --ulysses-degree 2 --output cat.png
//
// --help lists every option; docs/context_parallel.md says which mode to pick.

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "cli/options.hpp"
#include "diffuse/diffuse.hpp"
#include "diffuse/distributed/distributed.hpp"

namespace {

namespace cli = diffuse::cli;
using cli::Gen;

struct Arguments {
  cli::ModelOptions model{.device = ""};  // default: the process's own (cuda:LOCAL_RANK or cpu)
  cli::GenerationOptions generation;
  cli::ParallelOptions parallel;
  std::string output = "context_parallel.png";
  bool quiet = false;
};

Arguments parse(int argc, char** argv) {
  Arguments a;
  CLI::App app(
      "Parallel generation of one image: start cfg x ring x ulysses processes (one per GPU) with\n"
      "diffuse-launch or torchrun. Every process loads the pipeline and makes the same call. The transformer\n"
      "(FLUX.1, Qwen-Image) splits each image's tokens over the processes (Ulysses: all-to-all of heads;\n"
      "ring: K/V blocks passed around; both: unified on a ring x ulysses mesh); --cfg-degree 2 (SD,\n"
      "Qwen-Image) runs the unconditional and the conditional pass on two halves, each split as above.\n"
      "Rank 0 decodes and writes the image; it is the image one process would make (to rounding). A world\n"
      "larger than cfg x ring x ulysses leaves the extra ranks to compute alone.",
      "context_parallel");
  cli::init(app, "context_parallel --model DIR --prompt TEXT [--cfg-degree 2] [--ring-degree R] [--ulysses-degree U] [options]");
  cli::add_model_options(app, a.model);
  cli::add_generation_options(app, a.generation,
                              {Gen::Prompt, Gen::NegativePrompt, Gen::Size, Gen::Steps, Gen::Guidance,
                               Gen::TrueCfgScale, Gen::Seed, Gen::MaxSequenceLength, Gen::AttentionBackend});
  app.get_option("--prompt")->description("the prompt (one)")->required();
  app.get_option("--seed")->description("CPU generator seed (default: rank 0's random seed, shared)");
  cli::add_parallel_options(app, a.parallel);
  cli::add_text(app, "--output", a.output, "FILE", "the PNG rank 0 writes");
  cli::add_quiet_option(app, a.quiet);
  app.footer(
      "Environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (set by the launcher);\n"
      "DIFFUSE_DIST_TIMEOUT (seconds a process waits for the others before it fails, default 600).\n"
      "docs/context_parallel.md says which mode to pick.");
  cli::parse(app, argc, argv);
  if (a.generation.prompts.size() > 1)
    cli::usage_error(app, "one --prompt only (got " + std::to_string(a.generation.prompts.size()) + ")");
  return a;
}

// Exit code 2 for every failure, as this program always had.
[[noreturn]] void fail(const std::string& message) {
  std::cerr << "context_parallel: " << message << "\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  try {
    if (args.quiet) diffuse::set_log_level("warn");
    diffuse::DistributedOptions dist_options;
    if (!args.model.device.empty()) dist_options.device = args.model.device;
    diffuse::Distributed dist = diffuse::Distributed::init(dist_options);

    diffuse::PipelineOptions options;
    const cli::GenerationOptions& generation = args.generation;
    options.dtype = diffuse::parse_dtype(args.model.dtype);
    options.device = dist.device().str();
    options.attention_backend = generation.attention_backend;
    if (args.parallel.enabled()) {
      options.parallel_config = args.parallel.config();
      options.parallel_world = dist.shared_communicator();
    }
    const auto load_start = std::chrono::steady_clock::now();
    const std::unique_ptr<diffuse::DiffusionPipeline> pipe = diffuse::load_pipeline(args.model.model, options);
    const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

    diffuse::GenerateRequest request = generation.request();
    // One bar is enough: rank 0's.
    request.progress = !args.quiet && dist.rank() == 0 ? std::optional<bool>() : std::optional<bool>(false);
    const diffuse::GenerateOutput out = pipe->generate(request);

    if (!out.images.empty()) out.images.front().save_png(args.output);
    if (!args.quiet) {
      std::cerr << "rank " << dist.rank() << " of " << dist.world_size() << " on " << dist.device().str() << ": "
                << (options.parallel_config ? options.parallel_config->describe() : std::string("alone")) << ", load "
                << load_seconds << " s, encode " << out.times.encode_seconds << " s, denoise "
                << out.times.denoise_seconds << " s ("
                << 1000 * out.times.denoise_seconds /
                       static_cast<double>(generation.steps.value_or(pipe->info().default_steps))
                << " ms/step), decode "
                << out.times.decode_seconds << " s\n";
      if (!out.images.empty()) std::cerr << "wrote " << args.output << "\n";
    }
    dist.barrier();
    return 0;
  } catch (const diffuse::Error& e) {
    fail(e.what());
  } catch (const std::exception& e) {
    fail(std::string("unexpected error: ") + e.what());
  }
}
