// context_parallel: one image, its tokens split over the processes (one per GPU).
//
//   diffuse-launch --nproc-per-node 4 context_parallel --model DIR --prompt "a cat" --ulysses-degree 4 \
//       --dtype bfloat16 --seed 0 --output cat.png
//   torchrun --no-python --nproc-per-node 4 context_parallel --model DIR --prompt "a cat" \
//       --ring-degree 2 --ulysses-degree 2 --output cat.png
//
// --help lists every option; docs/context_parallel.md says which mode to pick.

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>

#include "diffuse/diffuse.hpp"
#include "diffuse/distributed/distributed.hpp"

namespace {

struct Arguments {
  std::string model;
  std::string prompt;
  std::optional<int64_t> height, width;
  int64_t steps = 28;
  double guidance = 3.5;
  std::optional<uint64_t> seed;
  int64_t max_sequence_length = 512;
  int64_t ring_degree = 1;
  int64_t ulysses_degree = 1;
  std::string attention_backend = "auto";
  std::string output = "context_parallel.png";
  std::string dtype = "float32";
  std::string device;  // default: the process's own (cuda:LOCAL_RANK or cpu)
  bool quiet = false;
};

const char* kHelp = R"(usage: context_parallel --model DIR --prompt TEXT [--ring-degree R] [--ulysses-degree U] [options]

Context-parallel generation of one image: start ring x ulysses processes (one per GPU) with
diffuse-launch or torchrun. Every process loads the pipeline and makes the same call; the transformer
splits each image's tokens over the processes (Ulysses: all-to-all of heads; ring: K/V blocks passed
around; both: unified on a ring x ulysses mesh). Rank 0 decodes and writes the image; it is the image
one process would make (to rounding). A world larger than ring x ulysses leaves the extra ranks to
compute alone.

  --model DIR                 pipeline folder in diffusers' format (required)
  --prompt TEXT               the prompt (required)
  --ring-degree R             ranks in the ring (default 1)
  --ulysses-degree U          ranks in each Ulysses group; must divide the attention heads (default 1)
  --attention-backend NAME    auto, math, native, flash, efficient, cudnn (default auto)
  --height N, --width N       image size, multiples of 16 (default 1024 x 1024)
  --steps N                   denoising steps (default 28)
  --guidance X                guidance scale (default 3.5)
  --seed N                    CPU generator seed (default: rank 0's random seed, shared)
  --max-sequence-length N     T5 tokens, at most 512 (default 512)
  --output FILE               the PNG rank 0 writes (default context_parallel.png)
  --dtype float32|bfloat16|float16   weights and compute (default float32)
  --device cpu|cuda|cuda:N    where this process runs (default cuda:LOCAL_RANK when there is a GPU)
  --quiet                     no progress bar or timings
  --help                      this text

Environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (set by the launcher);
DIFFUSE_DIST_TIMEOUT (seconds a process waits for the others before it fails, default 600).
)";

[[noreturn]] void fail(const std::string& message) {
  std::cerr << "context_parallel: " << message << "\n";
  std::exit(2);
}

int64_t parse_int(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    return value;
  } catch (const std::exception&) {
    fail(flag + " expects an integer, got '" + text + "'");
  }
}

Arguments parse(int argc, char** argv) {
  Arguments a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::cout << kHelp;
      std::exit(0);
    } else if (flag == "--model") a.model = value();
    else if (flag == "--prompt") a.prompt = value();
    else if (flag == "--ring-degree") a.ring_degree = parse_int(flag, value());
    else if (flag == "--ulysses-degree") a.ulysses_degree = parse_int(flag, value());
    else if (flag == "--attention-backend") a.attention_backend = value();
    else if (flag == "--height") a.height = parse_int(flag, value());
    else if (flag == "--width") a.width = parse_int(flag, value());
    else if (flag == "--steps") a.steps = parse_int(flag, value());
    else if (flag == "--guidance") {
      try {
        a.guidance = std::stod(value());
      } catch (const std::exception&) {
        fail("--guidance expects a number");
      }
    } else if (flag == "--seed") {
      const int64_t seed = parse_int(flag, value());
      if (seed < 0) fail("--seed must not be negative");
      a.seed = static_cast<uint64_t>(seed);
    } else if (flag == "--max-sequence-length") a.max_sequence_length = parse_int(flag, value());
    else if (flag == "--output") a.output = value();
    else if (flag == "--dtype") a.dtype = value();
    else if (flag == "--device") a.device = value();
    else if (flag == "--quiet") a.quiet = true;
    else fail("unknown option '" + flag + "' (see --help)");
  }
  if (a.model.empty()) fail("--model DIR is required (see --help)");
  if (a.prompt.empty()) fail("--prompt TEXT is required (see --help)");
  if (a.ring_degree < 1 || a.ulysses_degree < 1) fail("--ring-degree and --ulysses-degree must be at least 1");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  try {
    if (args.quiet) diffuse::set_log_level("warn");
    diffuse::DistributedOptions dist_options;
    if (!args.device.empty()) dist_options.device = args.device;
    diffuse::Distributed dist = diffuse::Distributed::init(dist_options);

    diffuse::FluxPipelineOptions options;
    options.dtype = diffuse::parse_dtype(args.dtype);
    options.device = dist.device().str();
    options.attention_backend = args.attention_backend;
    if (args.ring_degree * args.ulysses_degree > 1) {
      options.parallel_config = diffuse::ContextParallelConfig{.ring_degree = args.ring_degree,
                                                               .ulysses_degree = args.ulysses_degree};
      options.parallel_world = dist.shared_communicator();
    }
    const auto load_start = std::chrono::steady_clock::now();
    diffuse::FluxPipeline pipe = diffuse::FluxPipeline::from_pretrained(args.model, options);
    const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

    diffuse::GenerateRequest request;
    request.prompt = args.prompt;
    request.height = args.height;
    request.width = args.width;
    request.num_inference_steps = args.steps;
    request.guidance_scale = args.guidance;
    request.seed = args.seed;
    request.max_sequence_length = args.max_sequence_length;
    // One bar is enough: rank 0's.
    request.progress = !args.quiet && dist.rank() == 0 ? std::optional<bool>() : std::optional<bool>(false);
    const diffuse::GenerateOutput out = pipe.generate(request);

    if (!out.images.empty()) out.images.front().save_png(args.output);
    if (!args.quiet) {
      std::cerr << "rank " << dist.rank() << " of " << dist.world_size() << " on " << dist.device().str() << ": "
                << (options.parallel_config ? options.parallel_config->describe() : std::string("alone")) << ", load "
                << load_seconds << " s, encode " << out.times.encode_seconds << " s, denoise "
                << out.times.denoise_seconds << " s ("
                << 1000 * out.times.denoise_seconds / static_cast<double>(args.steps) << " ms/step), decode "
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
