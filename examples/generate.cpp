// generate: prompt in, PNG out, with any pipeline folder in diffusers' format that diffuse supports
// (FLUX.1, Stable Diffusion 1.x/2.x): the family comes from model_index.json's _class_name.
//
//   generate --model DIR --prompt "a cat" [--prompt "a dog" ...] --output cat.png
//   diffuse-launch --nproc-per-node 2 generate --model SD --prompt "a cat" --cfg-degree 2 --output cat.png
//
// --help lists every option with its default.

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "diffuse/diffuse.hpp"
#include "diffuse/distributed/distributed.hpp"
#include "cli/options.hpp"

namespace {

namespace cli = diffuse::cli;
using cli::Gen;

struct Arguments {
  cli::ModelOptions model;
  cli::GenerationOptions generation;
  cli::ParallelOptions parallel;  // --cfg-degree alone: context parallelism is context_parallel's
  std::string output = "out.png";
  std::string device_map;  // "" or "balanced"
  std::string max_memory;  // DEVICE=SIZE,...
  std::string offload;     // "", "model" or "sequential"
  std::string cuda_graphs = "on";
  int64_t repeats = 1;
  bool quiet = false;
};

// "cuda:0=16GB,cpu=64GB" -> {{"cuda:0", "16GB"}, {"cpu", "64GB"}}; the sizes are checked when planning.
diffuse::MaxMemory parse_budgets(const std::string& text) {
  diffuse::MaxMemory out;
  std::stringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    const auto equals = item.find('=');
    if (equals == std::string::npos || equals == 0)
      throw cli::invalid_value("--max-memory expects DEVICE=SIZE[,DEVICE=SIZE...], got '" + item + "'");
    out[item.substr(0, equals)] = item.substr(equals + 1);
  }
  return out;
}

Arguments parse(int argc, char** argv) {
  Arguments a;
  CLI::App app(
      "Generates images with a pipeline folder in diffusers' format (model_index.json and its component\n"
      "folders): FluxPipeline or StableDiffusionPipeline, picked by model_index.json's _class_name. The\n"
      "images are the ones diffusers makes for the same arguments and seed.",
      "generate");
  cli::init(app, "generate --model DIR --prompt TEXT [options]");
  cli::add_model_options(app, a.model);
  cli::add_generation_options(app, a.generation,
                              {Gen::Prompt, Gen::Prompt2, Gen::NegativePrompt, Gen::Scheduler, Gen::Size, Gen::RoundSize,
                               Gen::Steps, Gen::Guidance, Gen::TrueCfgScale, Gen::Seed, Gen::MaxSequenceLength,
                               Gen::ImagesPerPrompt, Gen::OutputType, Gen::Latents, Gen::SaveTensors});
  app.get_option("--prompt")->required();
  cli::add_text(app, "--output", a.output, "FILE", "PNG path; with several images, FILE's stem gets _0, _1, ...");
  app.option_defaults()->group("Placement");
  cli::add_choice(app, "--device-map", a.device_map, {"balanced"},
                  "spread whole components over the GPUs of --max-memory (diffusers'\n"
                  "device_map=\"balanced\"); --device is not used then");
  cli::add_text(app, "--max-memory", a.max_memory, "DEVICE=SIZE,...",
                "budgets for --device-map, e.g. cuda:0=16GB,cuda:1=16GB (default: what the GPUs have)",
                [](const std::string& text) { parse_budgets(text); });
  cli::add_choice(app, "--offload", a.offload, {"model", "sequential"},
                  "keep weights on the CPU and bring each model (model) or each block\n"
                  "(sequential) to --device when it runs");
  cli::add_choice(app, "--cuda-graphs", a.cuda_graphs, {"on", "off"},
                  "replay each denoiser call from a CUDA graph when the denoiser is wholly\n"
                  "on one GPU (not under sequential offload or --device-map); off: launch\n"
                  "its kernels one by one. The images are the same");
  cli::add_cfg_degree_option(app, a.parallel);
  app.option_defaults()->group("Options");
  cli::add_int(app, "--repeats", a.repeats,
               "make the call N times and report the last one's times and, on a GPU, its peak\n"
               "memory (the first warms the GPU up)", {.min = 1});
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
    // Check the output paths before the work, so that a typo costs nothing.
    for (const std::string& path : {args.output, generation.save_tensors}) {
      if (path.empty()) continue;
      const auto parent = std::filesystem::path(path).parent_path();
      if (!parent.empty() && !std::filesystem::is_directory(parent))
        throw diffuse::Error(path + ": cannot write: folder '" + parent.string() + "' does not exist");
    }

    const auto load_start = std::chrono::steady_clock::now();
    diffuse::PipelineOptions options;
    options.dtype = diffuse::parse_dtype(args.model.dtype);
    options.device = args.offload.empty() ? args.model.device : "cpu";
    options.device_map = args.device_map;
    options.cuda_graphs = args.cuda_graphs == "on";
    if (!args.max_memory.empty()) options.max_memory = parse_budgets(args.max_memory);
    if (request.output_type == diffuse::OutputType::Latent) options.skip = {"vae"};
    // --cfg-degree 2: this process is one rank of a launched world (diffuse-launch, torchrun); rank 0
    // writes the outputs.
    std::optional<diffuse::Distributed> dist;
    if (args.parallel.enabled()) {
      dist.emplace(diffuse::Distributed::init());
      if (options.device == "cuda" && dist->device().is_cuda()) options.device = dist->device().str();
      options.parallel_config = args.parallel.config();
      options.parallel_world = dist->shared_communicator();
      if (dist->rank() != 0) request.progress = false;
    }
    const bool writes = !dist || dist->rank() == 0;
    std::unique_ptr<diffuse::DiffusionPipeline> pipe = diffuse::load_pipeline(args.model.model, options);
    if (!pipe->device_map().empty() && !args.quiet) std::cerr << "device_map: " << pipe->device_map() << "\n";
    if (args.offload == "model") pipe->enable_model_cpu_offload(args.model.device);
    if (args.offload == "sequential") pipe->enable_sequential_cpu_offload(args.model.device);
    if (!generation.scheduler.empty()) pipe->set_scheduler(generation.scheduler);
    const double load_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

    // The peak memory of the last call alone (the one whose times are reported), on the GPU of
    // --device: what libtorch's caching allocator held for tensors, as torch.cuda.max_memory_allocated
    // after torch.cuda.reset_peak_memory_stats (0 on the CPU; not read under --device-map).
    const c10::Device memory_device(args.offload.empty() ? options.device : args.model.device);
    const bool report_peak = memory_device.is_cuda() && args.device_map.empty();
    diffuse::GenerateOutput out;
    for (int64_t run = 0; run < args.repeats; ++run) {
      if (report_peak && run == args.repeats - 1) diffuse::reset_peak_memory(memory_device);
      out = pipe->generate(request);
    }

    if (writes && (!generation.save_tensors.empty() || request.output_type == diffuse::OutputType::Latent)) {
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
    if (!args.quiet && writes)
      std::cerr << "times: load " << load_seconds << " s, encode " << out.times.encode_seconds << " s, denoise "
                << out.times.denoise_seconds << " s (" << generation.steps.value_or(pipe->info().default_steps)
                << " steps, " << pipe->info().scheduler << "), decode " << out.times.decode_seconds
                << " s, total " << out.times.total_seconds << " s\n";
    if (!args.quiet && writes && report_peak)
      std::cerr << "peak memory: " << static_cast<double>(diffuse::peak_memory_allocated(memory_device)) / (1 << 30)
                << " GiB allocated on " << memory_device << " during the last call\n";
  } catch (const diffuse::Error& e) {
    std::cerr << "generate: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "generate: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}
