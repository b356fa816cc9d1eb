// data_parallel: many prompts, one process per GPU, each generating its share.
//
//   diffuse-launch --nproc-per-node 2 data_parallel --model DIR --prompts-file prompts.txt --seed 0
//   torchrun --no-python --nproc-per-node 2 data_parallel --model DIR --prompt "a cat" --prompt "a dog"
//
// --help lists every option.

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/diffuse.hpp"
#include "diffuse/distributed/distributed.hpp"

namespace {

struct Arguments {
  std::string model;
  std::vector<std::string> prompts;
  std::string prompts_file;
  std::optional<int64_t> height, width;
  bool round_size = false;
  int64_t steps = 28;
  double guidance = 3.5;
  std::optional<uint64_t> seed;
  int64_t max_sequence_length = 512;
  int64_t num_images_per_prompt = 1;
  std::string output_dir = ".";
  std::string dtype = "float32";
  std::string device;  // default: the process's own (cuda:LOCAL_RANK or cpu)
  bool quiet = false;
};

const char* kHelp = R"(usage: data_parallel --model DIR (--prompt TEXT ... | --prompts-file FILE) [options]

Data-parallel generation: start one process per GPU with diffuse-launch or torchrun; the prompts are
split between the processes (contiguous shares, as even as possible, as Accelerate's
split_between_processes does), each process generates its share on its own device, and rank R writes
OUTPUT_DIR/result_R_I.png for the I-th image of its share. Alone (no launcher) it is one process doing
everything. With --seed S, prompt number G (counting from 0 over all prompts) is drawn with seed S + G,
so the images do not depend on how many processes there are.

  --model DIR                 pipeline folder in diffusers' format (required)
  --prompt TEXT               a prompt; repeat for more
  --prompts-file FILE         prompts, one per line (empty lines are skipped); after any --prompt
  --height N, --width N       image size, multiples of 16 (default 1024 x 1024)
  --round-size                round a size that is not a multiple of 16 down, as diffusers does
  --steps N                   denoising steps (default 28)
  --guidance X                guidance scale (default 3.5)
  --seed N                    prompt G gets the CPU generator seed N + G (default: random)
  --max-sequence-length N     T5 tokens, at most 512 (default 512)
  --num-images-per-prompt N   images for each prompt (default 1); they are result_R_I_K.png
  --output-dir DIR            where the images go (default: the current folder)
  --dtype float32|bfloat16|float16   weights and compute (default float32)
  --device cpu|cuda|cuda:N    where this process runs (default cuda:LOCAL_RANK when there is a GPU)
  --quiet                     no progress bar or timings
  --help                      this text

Environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (set by the launcher);
DIFFUSE_DIST_TIMEOUT (seconds a process waits for the others before it fails, default 600).
)";

[[noreturn]] void fail(const std::string& message) {
  std::cerr << "data_parallel: " << message << "\n";
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

double parse_double(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const double value = std::stod(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    return value;
  } catch (const std::exception&) {
    fail(flag + " expects a number, got '" + text + "'");
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
    else if (flag == "--prompt") a.prompts.push_back(value());
    else if (flag == "--prompts-file") a.prompts_file = value();
    else if (flag == "--height") a.height = parse_int(flag, value());
    else if (flag == "--width") a.width = parse_int(flag, value());
    else if (flag == "--round-size") a.round_size = true;
    else if (flag == "--steps") a.steps = parse_int(flag, value());
    else if (flag == "--guidance") a.guidance = parse_double(flag, value());
    else if (flag == "--seed") {
      const int64_t seed = parse_int(flag, value());
      if (seed < 0) fail("--seed must not be negative");
      a.seed = static_cast<uint64_t>(seed);
    } else if (flag == "--max-sequence-length") a.max_sequence_length = parse_int(flag, value());
    else if (flag == "--num-images-per-prompt") a.num_images_per_prompt = parse_int(flag, value());
    else if (flag == "--output-dir") a.output_dir = value();
    else if (flag == "--dtype") a.dtype = value();
    else if (flag == "--device") a.device = value();
    else if (flag == "--quiet") a.quiet = true;
    else fail("unknown option '" + flag + "' (see --help)");
  }
  if (a.model.empty()) fail("--model DIR is required (see --help)");
  if (!a.prompts_file.empty()) {
    std::ifstream in(a.prompts_file);
    if (!in) fail("cannot read --prompts-file '" + a.prompts_file + "'");
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) a.prompts.push_back(line);
    }
  }
  if (a.prompts.empty()) fail("no prompts: give --prompt TEXT or --prompts-file FILE (see --help)");
  if (a.num_images_per_prompt < 1) fail("--num-images-per-prompt must be at least 1");
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
    const int rank = dist.rank();
    const auto start = std::chrono::steady_clock::now();

    const std::vector<int64_t> mine = dist.process_indices(static_cast<int64_t>(args.prompts.size()));
    const std::filesystem::path output_dir = args.output_dir;
    std::filesystem::create_directories(output_dir);

    std::vector<std::string> written;  // "G\tPATH", for rank 0's summary
    double load_seconds = 0, generate_seconds = 0;
    if (!mine.empty()) {
      const auto load_start = std::chrono::steady_clock::now();
      diffuse::FluxPipelineOptions options;
      options.dtype = diffuse::parse_dtype(args.dtype);
      options.device = dist.device().str();
      diffuse::FluxPipeline pipe = diffuse::FluxPipeline::from_pretrained(args.model, options);
      load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

      int64_t image_index = 0;
      for (size_t i = 0; i < mine.size(); ++i) {
        const int64_t g = mine[i];
        diffuse::GenerateRequest request;
        request.prompt = args.prompts[static_cast<size_t>(g)];
        request.height = args.height;
        request.width = args.width;
        request.round_size = args.round_size;
        request.num_inference_steps = args.steps;
        request.guidance_scale = args.guidance;
        // The global index, not the local one: the same prompt gets the same noise in any world.
        if (args.seed) request.seed = *args.seed + static_cast<uint64_t>(g);
        request.max_sequence_length = args.max_sequence_length;
        request.num_images_per_prompt = args.num_images_per_prompt;
        if (args.quiet) request.progress = false;
        const diffuse::GenerateOutput out = pipe.generate(request);
        generate_seconds += out.times.total_seconds;
        for (size_t k = 0; k < out.images.size(); ++k) {
          std::ostringstream name;
          name << "result_" << rank << "_" << image_index;
          if (args.num_images_per_prompt > 1) name << "_" << k;
          name << ".png";
          const std::filesystem::path path = output_dir / name.str();
          out.images[k].save_png(path);
          written.push_back(std::to_string(g) + "\t" + path.string());
        }
        ++image_index;
      }
    }
    if (!args.quiet)
      std::cerr << "rank " << rank << ": " << mine.size() << " prompts on " << dist.device().str() << ", load "
                << load_seconds << " s, generate " << generate_seconds << " s\n";

    const std::vector<std::string> all = dist.gather_to_main(written);
    if (dist.is_main_process()) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::cout << all.size() << " images from " << dist.world_size() << " process"
                << (dist.world_size() == 1 ? "" : "es") << " in " << seconds << " s\n";
      for (const std::string& line : all) {
        const size_t tab = line.find('\t');
        if (tab == std::string::npos) continue;
        std::cout << "  prompt " << std::string_view(line).substr(0, tab) << ": "
                  << std::string_view(line).substr(tab + 1) << "\n";
      }
    }
  } catch (const diffuse::Error& e) {
    std::cerr << "data_parallel: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "data_parallel: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}
