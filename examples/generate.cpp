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

namespace {

struct Arguments {
  std::string model;
  std::vector<std::string> prompts;
  std::vector<std::string> prompts_2;
  std::optional<int64_t> height, width;
  bool round_size = false;
  int64_t steps = 28;
  double guidance = 3.5;
  std::optional<uint64_t> seed;
  std::string output = "out.png";
  int64_t max_sequence_length = 512;
  int64_t num_images_per_prompt = 1;
  std::string output_type = "image";
  std::string latents_file;
  std::string save_tensors;
  std::string dtype = "float32";
  std::string device = "cpu";
  bool quiet = false;
};

const char* kHelp = R"(usage: generate --model DIR --prompt TEXT [options]

Generates images with a FLUX.1 pipeline folder in diffusers' format (model_index.json and its
component folders), the same images diffusers' FluxPipeline makes for the same arguments and seed.

  --model DIR                 pipeline folder (required)
  --prompt TEXT               prompt; repeat for a batch (required unless --help)
  --prompt-2 TEXT             prompt for T5; repeat as --prompt (default: the same prompts)
  --height N, --width N       image size, multiples of 16 (default 1024 x 1024)
  --round-size                round a size that is not a multiple of 16 down, as diffusers does
  --steps N                   denoising steps (default 28)
  --guidance X                guidance scale (default 3.5)
  --seed N                    seed of the CPU generator for the initial noise (default: random)
  --max-sequence-length N     T5 tokens, at most 512 (default 512)
  --num-images-per-prompt N   images for each prompt (default 1)
  --output-type image|latent  what to produce (default image)
  --output FILE               PNG path; with several images, FILE's stem gets _0, _1, ... (default out.png)
  --latents FILE              initial latents: a safetensors file with a float32 tensor named "latents",
                              packed [batch, tokens, channels * 4] as diffusers packs them
  --save-tensors FILE         also write float32 "latents" (final, packed) and, unless the output type
                              is latent, "image" [batch, 3, H, W] in [0, 1] to this safetensors file
  --dtype float32|bfloat16|float16   weights and compute (default float32)
  --device cpu|cuda|cuda:N    where the models run (default cpu)
  --quiet                     no progress bar or timings
  --help                      this text
)";

[[noreturn]] void fail(const std::string& message) {
  std::cerr << "generate: " << message << "\n";
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
    else if (flag == "--prompt-2") a.prompts_2.push_back(value());
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
    else if (flag == "--output-type") a.output_type = value();
    else if (flag == "--output") a.output = value();
    else if (flag == "--latents") a.latents_file = value();
    else if (flag == "--save-tensors") a.save_tensors = value();
    else if (flag == "--dtype") a.dtype = value();
    else if (flag == "--device") a.device = value();
    else if (flag == "--quiet") a.quiet = true;
    else fail("unknown option '" + flag + "' (see --help)");
  }
  if (a.model.empty()) fail("--model DIR is required (see --help)");
  if (a.prompts.empty()) fail("--prompt TEXT is required (see --help)");
  if (a.output_type != "image" && a.output_type != "latent")
    fail("--output-type must be image or latent, got '" + a.output_type + "'");
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
    diffuse::GenerateRequest request;
    request.prompt = args.prompts;
    request.prompt_2 = args.prompts_2;
    request.height = args.height;
    request.width = args.width;
    request.round_size = args.round_size;
    request.num_inference_steps = args.steps;
    request.guidance_scale = args.guidance;
    request.seed = args.seed;
    request.max_sequence_length = args.max_sequence_length;
    request.num_images_per_prompt = args.num_images_per_prompt;
    request.output_type = diffuse::parse_output_type(args.output_type);
    if (args.quiet) request.progress = false;
    if (!args.latents_file.empty()) {
      diffuse::SafetensorsFile file(args.latents_file);
      if (!file.contains("latents")) throw diffuse::Error(args.latents_file + ": no tensor named 'latents'");
      request.latents = file.load("latents", at::kFloat);
    }
    // Check the output paths before the work, so that a typo costs nothing.
    for (const std::string& path : {args.output, args.save_tensors}) {
      if (path.empty()) continue;
      const auto parent = std::filesystem::path(path).parent_path();
      if (!parent.empty() && !std::filesystem::is_directory(parent))
        throw diffuse::Error(path + ": cannot write: folder '" + parent.string() + "' does not exist");
    }

    const auto load_start = std::chrono::steady_clock::now();
    diffuse::FluxPipelineOptions options;
    options.dtype = diffuse::parse_dtype(args.dtype);
    options.device = args.device;
    if (request.output_type == diffuse::OutputType::Latent) options.skip = {"vae"};
    diffuse::FluxPipeline pipe = diffuse::FluxPipeline::from_pretrained(args.model, options);
    const double load_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

    diffuse::GenerateOutput out = pipe.generate(request);

    if (!args.save_tensors.empty() || request.output_type == diffuse::OutputType::Latent) {
      std::vector<std::pair<std::string, at::Tensor>> tensors = {{"latents", out.latents.to(at::kCPU, at::kFloat)}};
      if (out.image_tensor.defined()) tensors.emplace_back("image", out.image_tensor.to(at::kFloat));
      std::string path = args.save_tensors;
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
                << out.times.denoise_seconds << " s (" << args.steps << " steps), decode " << out.times.decode_seconds
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
