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

#include "cli/options.hpp"
#include "diffuse/diffuse.hpp"
#include "diffuse/distributed/distributed.hpp"

namespace {

namespace cli = diffuse::cli;
using cli::Gen;

struct Arguments {
  cli::ModelOptions model{.device = ""};  // default: the process's own (cuda:LOCAL_RANK or cpu)
  cli::GenerationOptions generation;
  std::string prompts_file;
  std::string output_dir = ".";
  bool quiet = false;
};

Arguments parse(int argc, char** argv) {
  Arguments a;
  CLI::App app(
      "Data-parallel generation: start one process per GPU with diffuse-launch or torchrun; the prompts are\n"
      "split between the processes (contiguous shares, as even as possible, as Accelerate's\n"
      "split_between_processes does), each process generates its share on its own device, and rank R writes\n"
      "OUTPUT_DIR/result_R_I.png for the I-th image of its share. Alone (no launcher) it is one process doing\n"
      "everything. With --seed S, prompt number G (counting from 0 over all prompts) is drawn with seed S + G,\n"
      "so the images do not depend on how many processes there are.",
      "data_parallel");
  cli::init(app, "data_parallel --model DIR (--prompt TEXT ... | --prompts-file FILE) [options]");
  cli::add_model_options(app, a.model);
  cli::add_generation_options(app, a.generation,
                              {Gen::Prompt, Gen::NegativePrompt, Gen::Scheduler, Gen::Size, Gen::RoundSize, Gen::Steps,
                               Gen::Guidance, Gen::TrueCfgScale, Gen::Seed, Gen::MaxSequenceLength, Gen::ImagesPerPrompt});
  app.get_option("--prompt")->description("a prompt; repeat for more");
  app.get_option("--seed")->description("prompt G gets the CPU generator seed N + G (default: random)");
  app.get_option("--num-images-per-prompt")->description("images for each prompt; they are result_R_I_K.png");
  cli::add_text(app, "--prompts-file", a.prompts_file, "FILE",
                "prompts, one per line (empty lines are skipped); after any --prompt");
  cli::add_text(app, "--output-dir", a.output_dir, "DIR", "where the images go");
  cli::add_quiet_option(app, a.quiet);
  app.footer(
      "Environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (set by the launcher);\n"
      "DIFFUSE_DIST_TIMEOUT (seconds a process waits for the others before it fails, default 600).");
  cli::parse(app, argc, argv);

  std::vector<std::string>& prompts = a.generation.prompts;
  if (!a.prompts_file.empty()) {
    std::ifstream in(a.prompts_file);
    if (!in) cli::usage_error(app, "cannot read --prompts-file '" + a.prompts_file + "'");
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) prompts.push_back(line);
    }
  }
  if (prompts.empty()) cli::usage_error(app, "no prompts: give --prompt TEXT or --prompts-file FILE");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  try {
    if (args.quiet) diffuse::set_log_level("warn");
    diffuse::DistributedOptions dist_options;
    if (!args.model.device.empty()) dist_options.device = args.model.device;
    diffuse::Distributed dist = diffuse::Distributed::init(dist_options);
    const int rank = dist.rank();
    const auto start = std::chrono::steady_clock::now();

    const cli::GenerationOptions& generation = args.generation;
    const std::vector<int64_t> mine = dist.process_indices(static_cast<int64_t>(generation.prompts.size()));
    const std::filesystem::path output_dir = args.output_dir;
    std::filesystem::create_directories(output_dir);

    std::vector<std::string> written;  // "G\tPATH", for rank 0's summary
    double load_seconds = 0, generate_seconds = 0;
    if (!mine.empty()) {
      const auto load_start = std::chrono::steady_clock::now();
      diffuse::PipelineOptions options;
      options.dtype = diffuse::parse_dtype(args.model.dtype);
      options.device = dist.device().str();
      // Any family (FLUX.1, SD 1.5), from model_index.json's _class_name.
      std::unique_ptr<diffuse::DiffusionPipeline> pipe = diffuse::load_pipeline(args.model.model, options);
      if (!generation.scheduler.empty()) pipe->set_scheduler(generation.scheduler);
      load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

      int64_t image_index = 0;
      for (size_t i = 0; i < mine.size(); ++i) {
        const int64_t g = mine[i];
        diffuse::GenerateRequest request = generation.request();
        request.prompt = generation.prompts[static_cast<size_t>(g)];
        // One negative prompt for all, or one per prompt (the g-th goes with the g-th prompt).
        if (generation.negative_prompts.size() > 1 && generation.negative_prompts.size() == generation.prompts.size())
          request.negative_prompt = generation.negative_prompts[static_cast<size_t>(g)];
        // The global index, not the local one: the same prompt gets the same noise in any world.
        if (generation.seed) request.seed = *generation.seed + static_cast<uint64_t>(g);
        if (args.quiet) request.progress = false;
        const diffuse::GenerateOutput out = pipe->generate(request);
        generate_seconds += out.times.total_seconds;
        for (size_t k = 0; k < out.images.size(); ++k) {
          std::ostringstream name;
          name << "result_" << rank << "_" << image_index;
          if (generation.num_images_per_prompt > 1) name << "_" << k;
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
