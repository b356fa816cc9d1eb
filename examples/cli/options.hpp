#pragma once
// Options that several programs take, each declared once here with its meaning, default and check,
// and filled into one struct per group. A program adds the groups it honours, then reads the structs:
//
//   cli::ModelOptions model;                 // --model, --dtype, --device
//   cli::GenerationOptions generation;       // the generation options (a program picks which)
//   generation.seed = 0;                     // a program's own default: set before adding
//   cli::add_model_options(app, model);
//   cli::add_generation_options(app, generation, {Gen::Prompt, Gen::Size, Gen::Steps, Gen::Seed});
//   cli::parse(app, argc, argv);
//   diffuse::GenerateRequest request = generation.request();
//
// The value a field holds when its option is added is the default that --help shows. A program may
// refine an option's help after adding it: app.get_option("--seed")->description("...").
//
// A new generation option (--negative-prompt, --scheduler, ...) is a value of Gen, a field of
// GenerationOptions, one block in add_generation_options and, when it belongs to the request, one line
// in GenerationOptions::request(); then each program that honours it lists it.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cli/cli.hpp"
#include "diffuse/parallel/parallel_config.hpp"
#include "diffuse/pipelines/generate_request.hpp"

namespace diffuse::cli {

// ---- the model: which pipeline folder, in what precision, where ----------------------------------
struct ModelOptions {
  std::string model;              // --model DIR (required)
  std::string dtype = "float32";  // --dtype float32|bfloat16|float16
  // --device cpu|cuda|cuda:N. Empty: the process's own device, as the launcher assigns it
  // (cuda:LOCAL_RANK when there is a GPU, else cpu); the multi-process programs start with it empty.
  std::string device = "cpu";
};

// Adds --model, --dtype and --device (the "Model" group of --help).
void add_model_options(CLI::App& app, ModelOptions& options);

// The same options one at a time, for programs that take only some of them.
CLI::Option* add_model_option(CLI::App& app, std::string& model);
CLI::Option* add_dtype_option(CLI::App& app, std::string& dtype);
CLI::Option* add_device_option(CLI::App& app, std::string& device);

// The dtypes the programs take: diffusers' torch_dtype names of the types the models run in.
std::vector<std::string> dtype_names();

// --quiet: no progress bar or timings.
CLI::Option* add_quiet_option(CLI::App& app, bool& quiet);

// ---- generation: what to make ---------------------------------------------------------------------
// The options of the generation group, for a program to list the ones it honours.
enum class Gen {
  Prompt,             // --prompt TEXT, repeatable
  Prompt2,            // --prompt-2 TEXT, repeatable
  NegativePrompt,     // --negative-prompt TEXT, repeatable
  Scheduler,          // --scheduler NAME
  Size,               // --height N, --width N
  RoundSize,          // --round-size
  Steps,              // --steps N
  Guidance,           // --guidance X
  TrueCfgScale,       // --true-cfg-scale X
  Seed,               // --seed N
  MaxSequenceLength,  // --max-sequence-length N
  ImagesPerPrompt,    // --num-images-per-prompt N
  OutputType,         // --output-type image|latent
  Latents,            // --latents FILE
  SaveTensors,        // --save-tensors FILE
  AttentionBackend,   // --attention-backend NAME
};

// Defaults are GenerateRequest's and FluxPipelineOptions', so that an option a program does not take
// leaves the library's default.
struct GenerationOptions {
  std::vector<std::string> prompts;
  std::vector<std::string> prompts_2;    // empty: the same as prompts
  std::optional<int64_t> height, width;  // unset: the model's default size
  bool round_size = false;
  std::vector<std::string> negative_prompts;  // empty: none ("")
  std::optional<int64_t> steps;    // unset: the family's (28 for FLUX.1, 50 for SD)
  std::optional<double> guidance;  // unset: the family's (3.5 for FLUX.1, 7.5 for SD)
  std::optional<double> true_cfg_scale;  // unset: Qwen-Image's (4)
  std::string scheduler;           // a scheduler class name or alias; empty: the folder's
  std::optional<uint64_t> seed;  // unset: a random seed
  int64_t max_sequence_length = 512;
  int64_t num_images_per_prompt = 1;
  std::string output_type = "image";       // image | latent
  std::string latents_file;                // safetensors with "latents"; empty: drawn from the seed
  std::string save_tensors;                // safetensors to write; empty: none
  std::string attention_backend = "auto";  // a pipeline option, not part of the request

  // The request these options describe: prompts, sizes, steps, guidance, seed, sequence length,
  // images per prompt, output type and the initial latents read from latents_file. Throws
  // diffuse::Error when that file cannot be read or has no "latents" tensor.
  diffuse::GenerateRequest request() const;
};

// Adds the listed options, in the "Generation" group of --help. None is required here; a program that
// needs one marks it: app.get_option("--prompt")->required().
void add_generation_options(CLI::App& app, GenerationOptions& options, const std::vector<Gen>& which);

// ---- parallelism: one image over the ranks of a launched world (docs/context_parallel.md) ---------
struct ParallelOptions {
  int64_t cfg_degree = 1;      // --cfg-degree 1|2
  int64_t ring_degree = 1;     // --ring-degree N
  int64_t ulysses_degree = 1;  // --ulysses-degree N

  // Whether any degree is above 1 (the program then joins the launched world).
  bool enabled() const { return cfg_degree * ring_degree * ulysses_degree > 1; }
  diffuse::ParallelConfig config() const {
    return {.cfg_degree = cfg_degree, .ring_degree = ring_degree, .ulysses_degree = ulysses_degree};
  }
};

// --cfg-degree alone (a program whose families have no context parallelism to offer, or that keeps
// it simple), or with --ring-degree and --ulysses-degree; in the "Parallelism" group of --help.
void add_cfg_degree_option(CLI::App& app, ParallelOptions& options);
void add_parallel_options(CLI::App& app, ParallelOptions& options);

}  // namespace diffuse::cli
