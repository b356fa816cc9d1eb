#include "cli/options.hpp"

#include <algorithm>
#include <cctype>

#include "diffuse/error.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/models/attention_backend.hpp"

namespace diffuse::cli {
namespace {

// "cpu", "cuda", "cuda:N": the devices the programs can run on.
bool is_device_name(const std::string& text) {
  if (text == "cpu" || text == "cuda") return true;
  if (text.rfind("cuda:", 0) != 0 || text.size() == 5) return false;
  return std::all_of(text.begin() + 5, text.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
}

bool wanted(const std::vector<Gen>& which, Gen option) {
  return std::find(which.begin(), which.end(), option) != which.end();
}

// What happens when an optional is not given, for --help; nothing when the program set a default
// (then --help shows that value).
std::string unless_set(bool set, const std::string& text) { return set ? "" : " (default: " + text + ")"; }

}  // namespace

std::vector<std::string> dtype_names() { return {"float32", "bfloat16", "float16"}; }

CLI::Option* add_model_option(CLI::App& app, std::string& model) {
  return add_text(app, "--model", model, "DIR", "pipeline folder in diffusers' format (model_index.json and its\n"
                                               "component folders)")
      ->required()
      ->group("Model");
}

CLI::Option* add_dtype_option(CLI::App& app, std::string& dtype) {
  return add_choice(app, "--dtype", dtype, dtype_names(), "weights and compute")->group("Model");
}

CLI::Option* add_device_option(CLI::App& app, std::string& device) {
  const std::string help = device.empty()
                               ? "where this process runs\n(default: cuda:LOCAL_RANK when there is a GPU, else cpu)"
                               : "where the models run";
  return add_text(app, "--device", device, "cpu|cuda|cuda:N", help,
                  [](const std::string& text) {
                    if (!is_device_name(text))
                      throw invalid_value("--device expects cpu, cuda or cuda:N, got '" + text + "'");
                  })
      ->group("Model");
}

void add_model_options(CLI::App& app, ModelOptions& options) {
  add_model_option(app, options.model);
  add_dtype_option(app, options.dtype);
  add_device_option(app, options.device);
}

CLI::Option* add_quiet_option(CLI::App& app, bool& quiet) {
  return add_flag(app, "--quiet", quiet, "no progress bar or timings");
}

void add_generation_options(CLI::App& app, GenerationOptions& options, const std::vector<Gen>& which) {
  const std::string group = app.option_defaults()->get_group();
  app.option_defaults()->group("Generation");  // for the options added here
  if (wanted(which, Gen::Prompt)) {
    add_text_list(app, "--prompt", options.prompts, "TEXT", "the prompt; repeat for a batch");
  }
  if (wanted(which, Gen::Prompt2)) {
    add_text_list(app, "--prompt-2", options.prompts_2, "TEXT",
                  "the prompt for the second text encoder (T5); repeat as --prompt\n(default: the same prompts)");
  }
  if (wanted(which, Gen::NegativePrompt)) {
    add_text_list(app, "--negative-prompt", options.negative_prompts, "TEXT",
                  "what the image should not show (SD's classifier-free guidance, Qwen-Image's\n"
                  "true CFG); one for all prompts or one per prompt (default: none)");
  }
  if (wanted(which, Gen::Scheduler)) {
    add_text(app, "--scheduler", options.scheduler, "NAME",
             "the scheduler, by diffusers' class name (DDIMScheduler, ...) or an alias\n"
             "(pndm, ddim, euler, euler_a, dpm++2m, flow_match), made from the folder's\n"
             "scheduler config as diffusers' X.from_config(pipe.scheduler.config)\n"
             "(default: the folder's)");
  }
  if (wanted(which, Gen::Size)) {
    const std::string model_size = "the family's: 1024 for FLUX.1 and Qwen-Image, 512 for SD 1.5";
    add_int(app, "--height", options.height,
            "image height, a multiple of 16 for FLUX.1 and Qwen-Image, 8 for SD" + unless_set(options.height.has_value(), model_size),
            {.min = 0});
    add_int(app, "--width", options.width,
            "image width, as --height" + unless_set(options.width.has_value(), model_size), {.min = 0});
  }
  if (wanted(which, Gen::RoundSize)) {
    add_flag(app, "--round-size", options.round_size, "round a size that is not a multiple down, as diffusers does");
  }
  if (wanted(which, Gen::Steps)) {
    add_int(app, "--steps", options.steps,
            "denoising steps" +
                unless_set(options.steps.has_value(), "the family's: 28 for FLUX.1, 50 for SD and Qwen-Image"),
            {.min = 1});
  }
  if (wanted(which, Gen::Guidance)) {
    add_float(app, "--guidance", options.guidance,
              "the family's guidance scale: FLUX.1-dev's distilled guidance, SD's\nclassifier-free guidance (off at 1)" +
                  unless_set(options.guidance.has_value(), "3.5 for FLUX.1, 7.5 for SD"),
              {.min = 0});
  }
  if (wanted(which, Gen::TrueCfgScale)) {
    add_float(app, "--true-cfg-scale", options.true_cfg_scale,
              "Qwen-Image's true CFG: a second transformer call per step with the\n"
              "negative prompt, on when above 1 and --negative-prompt is given" +
                  unless_set(options.true_cfg_scale.has_value(), "4"),
              {.min = 0});
  }
  if (wanted(which, Gen::Seed)) {
    add_uint64(app, "--seed", options.seed,
               "seed of the CPU generator for the initial noise" + unless_set(options.seed.has_value(), "random"));
  }
  if (wanted(which, Gen::MaxSequenceLength)) {
    // The pipeline checks the upper bound, which is the text encoder's.
    add_int(app, "--max-sequence-length", options.max_sequence_length,
            "text tokens: T5's for FLUX.1 (at most 512), Qwen-Image's after its\ntemplate (at most 1024)",
            {.min = 1});
  }
  if (wanted(which, Gen::ImagesPerPrompt)) {
    add_int(app, "--num-images-per-prompt", options.num_images_per_prompt, "images for each prompt", {.min = 1});
  }
  if (wanted(which, Gen::OutputType)) {
    add_choice(app, "--output-type", options.output_type, {"image", "latent"},
               "what to make: images, or the final latents only (the VAE does not run)");
  }
  if (wanted(which, Gen::Latents)) {
    add_text(app, "--latents", options.latents_file, "FILE",
             "initial latents: a safetensors file with a float32 tensor named \"latents\",\n"
             "as diffusers' latents= takes them: packed [batch, tokens, channels * 4] for\n"
             "FLUX.1 and Qwen-Image, [batch, 4, H/8, W/8] for SD (default: drawn from\n"
             "the seed)");
  }
  if (wanted(which, Gen::SaveTensors)) {
    add_text(app, "--save-tensors", options.save_tensors, "FILE",
             "also write float32 \"latents\" (final, as output_type=\"latent\" returns\n"
             "them) and, unless the output type\n"
             "is latent, \"image\" [batch, 3, H, W] in [0, 1] to this safetensors file");
  }
  if (wanted(which, Gen::AttentionBackend)) {
    std::string names;
    for (const std::string& name : diffuse::attention_backend_names()) names += (names.empty() ? "" : "|") + name;
    // Checked by the library's parser, which also takes diffusers' names ("_native_flash", ...).
    add_text(app, "--attention-backend", options.attention_backend, names, "the attention kernels",
             [](const std::string& text) {
               try {
                 diffuse::parse_attention_backend(text);
               } catch (const diffuse::Error& e) {
                 throw invalid_value("--attention-backend: " + std::string(e.what()));
               }
             });
  }
  app.option_defaults()->group(group);
}

void add_cfg_degree_option(CLI::App& app, ParallelOptions& options) {
  add_int(app, "--cfg-degree", options.cfg_degree,
          "2: the unconditional and the conditional pass of guidance on two halves\n"
          "of the ranks (CFG parallelism; SD and Qwen-Image), exchanged once per step",
          {.min = 1, .max = 2})
      ->group("Parallelism");
}

void add_parallel_options(CLI::App& app, ParallelOptions& options) {
  add_cfg_degree_option(app, options);
  add_int(app, "--ring-degree", options.ring_degree, "ranks in the ring", {.min = 1, .max = 65536})->group("Parallelism");
  add_int(app, "--ulysses-degree", options.ulysses_degree, "ranks in each Ulysses group; must divide the attention heads",
          {.min = 1, .max = 65536})
      ->group("Parallelism");
}

diffuse::GenerateRequest GenerationOptions::request() const {
  diffuse::GenerateRequest request;
  request.prompt = prompts;
  request.prompt_2 = prompts_2;
  request.negative_prompt = negative_prompts;
  request.height = height;
  request.width = width;
  request.round_size = round_size;
  request.num_inference_steps = steps;
  request.guidance_scale = guidance;
  request.true_cfg_scale = true_cfg_scale;
  request.seed = seed;
  request.max_sequence_length = max_sequence_length;
  request.num_images_per_prompt = num_images_per_prompt;
  request.output_type = diffuse::parse_output_type(output_type);
  if (!latents_file.empty()) {
    diffuse::SafetensorsFile file(latents_file);
    if (!file.contains("latents")) throw diffuse::Error(latents_file + ": no tensor named 'latents'");
    request.latents = file.load("latents", at::kFloat);
  }
  return request;
}

}  // namespace diffuse::cli
