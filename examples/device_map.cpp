// device_map: every placement feature of diffuse on one pipeline folder of any family diffuse runs
// (FLUX.1, Stable Diffusion, Qwen-Image: model_index.json says which, and names the components), with
// each map printed. The denoiser is the folder's "transformer" or "unet".
//   1. Plans from safetensors headers and configs alone (nothing loaded): the pipeline's "balanced"
//      map, the denoiser's "auto", "balanced_low_0" and "sequential" maps within --max-memory, and
//      the error an impossible budget gives.
//   2. The flow of diffusers' distributed-inference guide: the text encoders "balanced" over the GPUs,
//      the denoiser "auto" over them, the VAE on one; the peak memory of every GPU in each stage.
//   3. The same call on one device, compared with 2.
//   4. enable_model_cpu_offload and enable_sequential_cpu_offload on that pipeline, compared with 3.
//
//   device_map --model DIR [--max-memory cuda:0=16GB,cuda:1=16GB] [--dtype bfloat16] [--height 512]
//              [--width 512] [--steps 4] [--seed 0] [--prompt TEXT] [--activation-memory auto|SIZE]
//              [--tolerance X] [--skip-offload]
//
// Without a GPU the defaults are cpu=1MB,disk=1GB and no room kept for activations, so that a small
// pipeline's denoiser (the tiny fixtures') is split between CPU memory and disk. Exits 1 when an
// output differs from the one-device run by more than --tolerance, or a GPU's peak memory exceeds its
// budget.

#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>

#include "cli/options.hpp"
#include "diffuse/diffuse.hpp"
#include "diffuse/pipelines/component_registry.hpp"
#include "diffuse/pipelines/staged_call.hpp"
#include "diffuse/placement/device_memory.hpp"
#include "diffuse/placement/model_units.hpp"
#include "diffuse/placement/module_hooks.hpp"
#include "diffuse/placement/planner.hpp"

using namespace diffuse;

namespace {

using cli::Gen;  // diffuse::cli, through the using-directive above

// "cuda:0=16GB,cuda:1=16GB" -> {{"cuda:0", "16GB"}, {"cuda:1", "16GB"}}; the sizes are checked by
// parse_max_memory.
MaxMemory parse_budgets(const std::string& text) {
  MaxMemory out;
  std::stringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    const auto equals = item.find('=');
    if (equals == std::string::npos)
      throw cli::invalid_value("--max-memory expects DEVICE=SIZE[,DEVICE=SIZE...], got '" + item + "'");
    out[item.substr(0, equals)] = item.substr(equals + 1);
  }
  return out;
}

struct Arguments {
  cli::ModelOptions model;  // --model and --dtype; every stage picks its own devices
  cli::GenerationOptions generation{.prompts = {"a photo of a cat wearing a tiny wizard hat"},
                                    .height = 512, .width = 512, .steps = 4, .seed = 0};
  std::string budgets;            // --max-memory; empty: 16GB per GPU, or cpu=1MB,disk=1GB without one
  std::string activation_memory;  // empty: "auto" with a GPU, else 0
  std::optional<double> tolerance;
  bool skip_offload = false;
};

Arguments parse(int argc, char** argv) {
  Arguments a;
  CLI::App app(
      "Shows diffuse's placement on a pipeline folder of any family diffuse runs (FluxPipeline,\n"
      "StableDiffusionPipeline, QwenImagePipeline, as its model_index.json says): planned maps, the\n"
      "multi-GPU flow of diffusers' distributed-inference guide with its peak memory per GPU (text\n"
      "encoders \"balanced\", the denoiser - transformer or unet - \"auto\", the VAE on one device), the\n"
      "same call on one device, and model / sequential CPU offload, each compared with the one-device\n"
      "output.\n"
      "Exits 1 when an output differs from the one-device run by more than --tolerance, or a GPU's\n"
      "peak memory exceeds its budget.",
      "device_map");
  cli::init(app, "device_map --model DIR [--max-memory DEVICE=SIZE,...] [options]");
  cli::add_model_option(app, a.model.model);
  cli::add_dtype_option(app, a.model.dtype);
  cli::add_generation_options(app, a.generation, {Gen::Prompt, Gen::Size, Gen::Steps, Gen::Seed});
  app.get_option("--prompt")->description("the prompt (one)");
  cli::add_text(app, "--max-memory", a.budgets, "DEVICE=SIZE,...",
                "budgets, as Accelerate's max_memory: cuda:0=16GB,cuda:1=16GB,cpu=64GiB\n"
                "(default: 16GB per GPU, or cpu=1MB,disk=1GB without a GPU)",
                [](const std::string& text) {
                  try {
                    parse_max_memory(parse_budgets(text));
                  } catch (const Error& e) {
                    throw cli::invalid_value("--max-memory: " + std::string(e.what()));
                  }
                })
      ->group("Placement");
  cli::add_text(app, "--activation-memory", a.activation_memory, "auto|SIZE",
                "kept free per GPU for activations\n"
                "(default: auto, the denoiser's estimate for its family's usual size; 0 without a GPU)",
                [](const std::string& text) {
                  if (text == "auto") return;
                  try {
                    parse_memory_size(text);
                  } catch (const Error& e) {
                    throw cli::invalid_value("--activation-memory: " + std::string(e.what()));
                  }
                })
      ->group("Placement");
  cli::add_float(app, "--tolerance", a.tolerance,
                 "largest max|a-b|/max|b| against the one-device run\n"
                 "(default: 2e-2 in bfloat16/float16, 1e-5 in float32)",
                 {.min = 0});
  cli::add_flag(app, "--skip-offload", a.skip_offload, "leave out part 4 (CPU offload)");
  cli::parse(app, argc, argv);
  if (a.generation.prompts.size() > 1)
    cli::usage_error(app, "one --prompt only (got " + std::to_string(a.generation.prompts.size()) + ")");
  return a;
}

// The component class model_index.json gives `name`, which must be a model diffuse loads.
const ComponentClass& model_class(const ModelIndex& index, const std::string& name) {
  const std::string& class_name = index.components.at(name).class_name;
  const ComponentClass* found = find_component_class(class_name);
  if (found == nullptr || found->kind != ComponentClass::Kind::Model)
    throw Error("component '" + name + "' has class " + class_name + ", which is not a model diffuse loads");
  return *found;
}

// The map a model runs under (its hooks'), empty when it has none.
DeviceMap device_map_of(const torch::nn::Module& model) {
  const ModuleHooks* hooks = hooks_of(model);
  return hooks != nullptr ? hooks->device_map() : DeviceMap();
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.detach().to(at::kCPU, at::kDouble), b = expected.detach().to(at::kCPU, at::kDouble);
  const double scale = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

// One line per device: how many units, how many bytes, from which unit to which.
void print_plan(const std::string& title, const DevicePlan& plan) {
  std::cout << "  " << title << "\n";
  for (const auto& [device, bytes] : plan.bytes) {
    const auto units = plan.map.units_on(device);
    std::cout << "    " << std::left << std::setw(7) << device << std::right << std::setw(3) << units.size()
              << " units " << std::setw(10) << format_bytes(bytes) << "  " << units.front()
              << (units.size() > 1 ? " .. " + units.back() : "") << "\n";
  }
  for (const auto& note : plan.notes) std::cout << "    note: " << note << "\n";
}

struct PeakMemory {
  std::vector<std::pair<std::string, uint64_t>> budgets;  // the GPUs of max_memory
  std::map<std::string, uint64_t> worst;
  bool over = false;

  void reset() {
    for (const auto& [device, budget] : budgets) reset_peak_memory(c10::Device(device));
  }
  // `budgeted`: the stage runs under max_memory (the device-mapped flow), so its peaks must fit it.
  void print(const std::string& stage, bool budgeted) {
    if (budgets.empty()) return;
    std::cout << "    peak memory (" << stage << "):";
    for (const auto& [device, budget] : budgets) {
      const uint64_t peak = peak_memory_allocated(c10::Device(device));
      if (budgeted) {
        worst[device] = std::max(worst[device], peak);
        over = over || peak > budget;
      }
      std::cout << "  " << device << " " << format_bytes(peak) << (budgeted && peak > budget ? " (OVER its budget)" : "");
    }
    std::cout << "\n";
  }
};

}  // namespace

int main(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  const std::string& model = args.model.model;
  const std::string& dtype_name = args.model.dtype;
  std::string activation_memory = args.activation_memory;
  try {
    const c10::ScalarType dtype = parse_dtype(dtype_name);
    const double tolerance = args.tolerance.value_or(dtype == at::kFloat ? 1e-5 : 2e-2);
    MaxMemory max_memory;
    if (!args.budgets.empty()) {
      max_memory = parse_budgets(args.budgets);
    } else if (gpu_count() > 0) {
      for (int i = 0; i < gpu_count(); ++i) max_memory["cuda:" + std::to_string(i)] = "16GB";
    } else {
      max_memory = {{"cpu", "1MB"}, {"disk", "1GB"}};
    }
    if (activation_memory.empty()) activation_memory = gpu_count() > 0 ? "auto" : "0";
    const MemoryBudget budget = parse_max_memory(max_memory);
    PeakMemory peaks;
    for (const auto& entry : budget)
      if (is_gpu_device(entry.first)) peaks.budgets.push_back(entry);
    const std::string one_device = peaks.budgets.empty() ? "cpu" : peaks.budgets.front().first;
    const std::filesystem::path dir = model;
    const StageComponents parts = stage_components(dir);  // model_index.json's names, by stage
    const ModelIndex index = ModelIndex::from_file(dir / "model_index.json");
    const std::string& denoiser = parts.denoiser;
    const ComponentClass& denoiser_class = model_class(index, denoiser);
    std::cout << index.class_name << " (" << denoiser << "): " << dir.string() << "\n";
    std::cout << "max_memory: ";
    for (const auto& [device, bytes] : budget) std::cout << device << "=" << format_bytes(bytes) << " ";
    std::cout << "(" << gpu_count() << " GPU(s) present), dtype " << dtype_name << "\n\n";

    // ---- 1. plans, from headers and configs ------------------------------------------------------------
    std::cout << "1. Plans (sizes from safetensors headers and configs; no weight is read)\n";
    // Every model component the folder names, sized as the pipeline's "balanced" map sizes them.
    std::vector<PlacementUnit> components;
    for (const auto& [name, entry] : index.components) {
      const ComponentClass* loader = find_component_class(entry.class_name);
      if (loader == nullptr || loader->kind != ComponentClass::Kind::Model) continue;
      components.push_back({name, loader->weight_bytes(dir / name, dtype)});
    }
    const DevicePlan pipeline_plan = plan_pipeline_balanced(components, budget);
    print_plan("pipeline, device_map \"balanced\": " + pipeline_plan.map.to_json(), pipeline_plan);
    // The denoiser built on the meta device: its units and their sizes, without memory.
    const ModelPlacementSizes sizes = denoiser_class.placement_sizes(dir / denoiser, dtype);
    const std::vector<PlacementUnit>& units = sizes.units;
    const uint64_t activations =
        activation_memory == "auto" ? sizes.activation_bytes : parse_memory_size(activation_memory);
    std::cout << "  " << denoiser << ": " << units.size() << " units; " << format_bytes(activations)
              << " kept free per executing device for activations\n";
    for (auto strategy : {PlacementStrategy::Auto, PlacementStrategy::BalancedLow0, PlacementStrategy::Sequential}) {
      const std::string title = denoiser + ", device_map \"" + std::string(placement_strategy_name(strategy)) + "\"";
      try {
        print_plan(title, plan_model_placement(units, budget, {strategy, activations, denoiser}));
      } catch (const Error& e) {
        std::cout << "  " << title << ": " << e.what() << "\n";
      }
    }
    // An impossible budget: the same devices but "disk", holding half of the denoiser between them.
    MemoryBudget half;
    for (const auto& [device, bytes] : budget)
      if (device != "disk") half.emplace_back(device, 0);
    uint64_t total = 0;
    for (const auto& unit : units) total += unit.bytes;
    for (auto& entry : half) entry.second = total / (2 * half.size());
    try {
      plan_model_placement(units, half, {PlacementStrategy::Auto, activations, denoiser});
    } catch (const Error& e) {
      std::cout << "  an impossible budget (half of the " << denoiser << "'s size, no disk):\n    " << e.what() << "\n";
    }

    // ---- 2. the guide's flow ---------------------------------------------------------------------------
    std::cout << "\n2. diffusers' distributed-inference flow\n";
    GenerateRequest request = args.generation.request();
    request.progress = false;
    PromptEmbeddings embeddings;
    auto start = std::chrono::steady_clock::now();
    peaks.reset();
    {
      auto encoders = load_pipeline(dir, {.dtype = dtype, .skip = parts.all_except(parts.text),
                                          .device_map = "balanced", .max_memory = max_memory});
      std::cout << "  text encoders, device_map \"balanced\": " << encoders->device_map() << "\n";
      // With the negative prompt ("" for SD's classifier-free guidance) where the family's call uses one.
      embeddings = encoders->encode_prompt(staged_encode_request(request, encoders->info()));
    }  // the text encoders are freed here
    std::cout << "    encoded in " << std::fixed << std::setprecision(2) << seconds_since(start) << " s (with loading)\n";
    peaks.print("text encoders", true);

    at::Tensor latents;
    int64_t height = 0, width = 0;
    start = std::chrono::steady_clock::now();
    peaks.reset();
    {
      const Component model = denoiser_class.load(
          dir / denoiser, {.dtype = dtype, .device_map = "auto", .max_memory = max_memory,
                           .activation_memory = activation_memory});
      std::cout << "  " << denoiser << ", device_map \"auto\": " << device_map_of(*model.module()) << "\n";
      auto pipe = load_pipeline(dir, {.dtype = dtype, .skip = parts.all_except({denoiser}),
                                      .components = {{denoiser, model}}});
      const GenerateOutput out = pipe->generate(with_embeddings(request, embeddings, OutputType::Latent));
      latents = out.latents;
      height = out.height;
      width = out.width;
    }
    std::cout << "    denoised in " << seconds_since(start) << " s (with loading)\n";
    peaks.print(denoiser, true);

    at::Tensor image;
    start = std::chrono::steady_clock::now();
    peaks.reset();
    {
      auto decoder = load_pipeline(dir, {.dtype = dtype, .device = one_device, .skip = parts.all_except({parts.vae})});
      std::cout << "  " << parts.vae << " on " << one_device << "\n";
      image = decoder->decode_latents(latents, height, width).cpu();
    }
    std::cout << "    decoded in " << seconds_since(start) << " s (with loading)\n";
    peaks.print("vae", true);
    if (!peaks.budgets.empty()) {
      std::cout << "  peak memory over the flow:";
      for (const auto& [device, budget_bytes] : peaks.budgets)
        std::cout << "  " << device << " " << format_bytes(peaks.worst[device]) << " of " << format_bytes(budget_bytes);
      std::cout << (peaks.over ? "  OVER BUDGET\n" : "  (each under its budget)\n");
    }

    // ---- 3. the same call on one device ----------------------------------------------------------------
    std::cout << "\n3. The same call with the whole pipeline on " << one_device << "\n";
    bool ok = !peaks.over;
    auto compare = [&](const std::string& what, const GenerateOutput& out, const GenerateOutput& reference) {
      const double latents_error = relative_error(out.latents, reference.latents);
      const double image_error = relative_error(out.image_tensor, reference.image_tensor);
      const bool close = latents_error <= tolerance && image_error <= tolerance;
      ok = ok && close;
      std::cout << "    " << what << ": latents max|a-b|/max|b| = " << std::scientific << std::setprecision(3)
                << latents_error << ", image " << image_error << (close ? " (within " : " (NOT within ")
                << tolerance << ")\n" << std::fixed << std::setprecision(2);
    };
    auto single = load_pipeline(dir, {.dtype = dtype, .device = one_device});
    GenerateRequest whole = request;
    whole.output_type = OutputType::Tensor;
    start = std::chrono::steady_clock::now();
    peaks.reset();
    const GenerateOutput reference = single->generate(whole);
    std::cout << "    generated in " << seconds_since(start) << " s\n";
    peaks.print("one device", false);
    GenerateOutput staged_out;
    staged_out.latents = latents;
    staged_out.image_tensor = image;
    compare("device-mapped flow vs one device", staged_out, reference);

    // ---- 4. offloading ---------------------------------------------------------------------------------
    if (!args.skip_offload) {
      std::cout << "\n4. CPU offload on " << one_device << "\n";
      single->enable_model_cpu_offload(one_device);
      start = std::chrono::steady_clock::now();
      peaks.reset();
      compare("enable_model_cpu_offload", single->generate(whole), reference);
      std::cout << "    generated in " << seconds_since(start) << " s\n";
      peaks.print("model offload", false);
      single->enable_sequential_cpu_offload(one_device);
      std::cout << "  sequential offload, the " << denoiser << "'s map: "
                << device_map_of(*single->components().at(denoiser).module()).size() << " units on \"cpu\", run on "
                << single->execution_device(denoiser) << "\n";
      start = std::chrono::steady_clock::now();
      peaks.reset();
      compare("enable_sequential_cpu_offload", single->generate(whole), reference);
      std::cout << "    generated in " << seconds_since(start) << " s\n";
      peaks.print("sequential offload", false);
      single->remove_all_hooks();
    }
    std::cout << "\n" << (ok ? "all outputs match and every GPU stayed within its budget" : "FAILED") << "\n";
    return ok ? 0 : 1;
  } catch (const std::exception& e) {  // diffuse::Error, and libtorch's c10::Error
    std::cerr << "device_map: " << e.what() << "\n";
    return 1;
  }
}
