// One rank of a context-parallel test (tests/test_context_parallel.cpp starts 2 or 4, with torchrun's
// variables set; CPU over Gloo). Each scenario compares its results with the single-process answer it
// computes itself and exits
//   0  all checks passed ("ok ..." lines give the errors measured)
//   1  a check failed (the line says which)
//   3  a diffuse::Error was thrown (its message is printed after "error: ")
//
//   helper_context_parallel attention RING ULYSSES     context_parallel_attention, several lengths
//   helper_context_parallel transformer RING ULYSSES   the tiny-flux transformer, fixture and uneven
//   helper_context_parallel pipeline RING ULYSSES      a whole FluxPipeline call vs the fixture's latents
//   helper_context_parallel config_errors              (4 ranks) bad configs are refused before any collective
//   helper_context_parallel cfg_pipeline FIXTURE CFG RING ULYSSES
//                                                      CFG parallelism (with context parallelism inside)
//                                                      for the fixture's pipeline (tiny-sd, tiny-qwenimage):
//                                                      every step's latents vs one process, the call
//                                                      without guidance (falls back), identical ranks
//   helper_context_parallel cfg_config_errors          (4 ranks) bad parallel configs of pipelines are refused

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "diffuse/distributed/distributed.hpp"
#include "diffuse/error.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/parallel/context_parallel.hpp"
#include "diffuse/parallel/parallel_mesh.hpp"
#include "diffuse/parallel/partial_attention.hpp"
#include "diffuse/parallel/sequence_shards.hpp"
#include "diffuse/pipelines/flux_pipeline.hpp"
#include "diffuse/pipelines/pipeline_registry.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

int failures = 0;

void check_close(const at::Tensor& actual, const at::Tensor& expected, double tolerance, const std::string& what) {
  const bool same_shape = actual.sizes() == expected.sizes();
  // A rank may hold no tokens at all (3 tokens over 4 ranks): then only the shape can be checked.
  const double error = !same_shape ? INFINITY : expected.numel() == 0 ? 0 : test::relative_error(actual, expected);
  if (same_shape && error <= tolerance) {
    std::cout << "ok " << what << ": max relative error " << error << std::endl;
  } else {
    ++failures;
    std::cout << "FAIL " << what << ": shapes " << actual.sizes() << " vs " << expected.sizes() << ", error " << error
              << " > " << tolerance << std::endl;
  }
}

// The world communicator, shared without ownership (the Distributed object outlives its users).
std::shared_ptr<Communicator> world_of(Distributed& dist) {
  return std::shared_ptr<Communicator>(&dist.communicator(), [](Communicator*) {});
}

// Where this rank computes: its own GPU when the tests run on CUDA (DIFFUSE_TEST_DEVICE=cuda), else the CPU.
c10::Device rank_device(Distributed& dist) { return test::test_device().is_cuda() ? dist.device() : c10::Device(at::kCPU); }

ContextParallelConfig config_from(const char* ring, const char* ulysses) {
  ContextParallelConfig config;
  config.ring_degree = std::stoll(ring);
  config.ulysses_degree = std::stoll(ulysses);
  return config;
}

int run_attention(const ContextParallelConfig& config) {
  Distributed dist = Distributed::init();
  const ContextParallelMesh mesh(world_of(dist), config, /*num_heads=*/4);
  for (int64_t length : {15, 37, 8, 3}) {
    for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
      // Every rank draws the same full tensors, keeps its shard, and knows the whole answer.
      at::manual_seed(1000 + length);
      const at::Tensor q = at::randn({2, 4, length, 8}, at::kDouble).to(dtype);
      const at::Tensor k = at::randn({2, 4, length, 8}, at::kDouble).to(dtype);
      const at::Tensor v = at::randn({2, 4, length, 8}, at::kDouble).to(dtype);
      const double scale = 1.0 / std::sqrt(8.0);
      const at::Tensor expected = at::softmax(at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(-2, -1)) * scale, -1)
                                      .matmul(v.to(at::kDouble));
      // Ranks outside the mesh (a mesh smaller than the world) hold the whole sequence.
      const int64_t parts = mesh.active() ? mesh.degree() : 1, index = mesh.active() ? mesh.rank() : 0;
      const c10::Device device = rank_device(dist);
      const at::Tensor out = context_parallel_attention(take_shard(q, 2, parts, index).contiguous().to(device),
                                                        take_shard(k, 2, parts, index).contiguous().to(device),
                                                        take_shard(v, 2, parts, index).contiguous().to(device), mesh,
                                                        scale);
      if (out.scalar_type() != dtype) {
        ++failures;
        std::cout << "FAIL output dtype " << out.scalar_type() << std::endl;
      }
      check_close(out, take_shard(expected, 2, parts, index).to(dtype), /*scores and softmax run in float32 (the math path)*/ 1e-5,
                  config.describe() + " attention, " + std::to_string(length) + " tokens, " + c10::toString(dtype));
    }
  }
  return failures == 0 ? 0 : 1;
}

FluxTransformerInputs reference_inputs(c10::Device device) {
  const SafetensorsFile& ref = test::tiny_flux_reference();
  return {.hidden_states = ref.load("latents_init", at::kFloat, device),
          .encoder_hidden_states = ref.load("prompt_embeds", at::kFloat, device),
          .pooled_projections = ref.load("pooled_prompt_embeds", at::kFloat, device),
          .timestep = ref.load("transformer_timestep_step0", at::kFloat, device),
          .img_ids = ref.load("latent_image_ids", at::kFloat, device),
          .txt_ids = ref.load("text_ids", at::kFloat, device),
          .guidance = ref.load("transformer_guidance", at::kFloat, device)};
}

int run_transformer(const ContextParallelConfig& config) {
  Distributed dist = Distributed::init();
  at::NoGradGuard no_grad;
  const c10::Device device = rank_device(dist);
  auto model = load_flux_transformer(test::tiny_flux_pipeline() / "transformer", at::kFloat, device);
  const FluxTransformerInputs inputs = reference_inputs(device);
  // Uneven token counts: 15 image tokens and 29 text tokens (over 4 ranks: 4 4 4 3 and 8 7 7 7).
  FluxTransformerInputs uneven = inputs;
  uneven.hidden_states = inputs.hidden_states.narrow(1, 0, 15);
  uneven.img_ids = inputs.img_ids.narrow(0, 0, 15);
  uneven.encoder_hidden_states = inputs.encoder_hidden_states.narrow(1, 0, 29);
  uneven.txt_ids = inputs.txt_ids.narrow(0, 0, 29);
  const at::Tensor alone = model->forward(inputs), uneven_alone = model->forward(uneven);

  model->enable_parallelism(config, world_of(dist));
  check_close(model->forward(inputs), test::tiny_flux_reference().load("transformer_out_step0"), 1e-4,
              config.describe() + " transformer vs transformer_out_step0, rank " + std::to_string(dist.rank()));
  check_close(model->forward(inputs), alone, 1e-5,
              config.describe() + " transformer vs one process, rank " + std::to_string(dist.rank()));
  check_close(model->forward(uneven), uneven_alone, 1e-5,
              config.describe() + " transformer, 15 image + 29 text tokens vs one process, rank " +
                  std::to_string(dist.rank()));
  model->disable_parallelism();
  check_close(model->forward(uneven), uneven_alone, 0, "after disable_parallelism");
  return failures == 0 ? 0 : 1;
}

// The whole pipeline under context parallelism, as a user calls it: every rank loads the folder with
// parallel_config and makes the fixture's call; every rank's latents match diffusers', rank 0 alone
// gets the image. A second call without a seed must still agree over the ranks (rank 0's seed).
int run_pipeline(const ContextParallelConfig& config) {
  Distributed dist = Distributed::init();
  FluxPipeline pipe = FluxPipeline::from_pretrained(test::tiny_flux_pipeline(),
                                                    {.device = rank_device(dist).str(),
                                                     .parallel_config = config,
                                                     .parallel_world = dist.shared_communicator()});
  const SafetensorsFile& reference = test::tiny_flux_reference();
  GenerateRequest request = test::reference_request();
  std::vector<at::Tensor> steps;
  request.callback = [&](const StepInfo& step) {
    steps.push_back(step.latents.clone());
    return true;
  };
  const GenerateOutput out = pipe.generate(request);
  const std::string where = config.describe() + ", rank " + std::to_string(dist.rank());
  for (size_t i = 0; i < steps.size(); ++i)
    check_close(steps[i], reference.load("latents_after_step_" + std::to_string(i)), 1e-4,
                where + ": latents after step " + std::to_string(i));
  check_close(out.latents, reference.load("latents_final"), 1e-4, where + ": final latents vs diffusers");
  const bool has_image = out.image_tensor.defined();
  if (has_image != (dist.rank() == 0)) {
    ++failures;
    std::cout << "FAIL " << where << (has_image ? " decoded an image" : " has no image") << std::endl;
  }
  if (has_image) check_close(out.image_tensor, reference.load("pipeline_output_pt"), 1e-4, where + ": image vs diffusers");

  request.seed.reset();
  request.callback = nullptr;
  request.output_type = OutputType::Latent;
  request.num_inference_steps = 1;
  const at::Tensor random_start = pipe.generate(request).latents;
  const at::Tensor on_rank_0 = dist.communicator().broadcast(random_start.contiguous(), 0);
  check_close(random_start, on_rank_0, 0, where + ": unseeded call agrees with rank 0");
  return failures == 0 ? 0 : 1;
}

// Each bad config must be refused with a message that says why; nothing collective runs before.
int run_config_errors() {
  Distributed dist = Distributed::init();
  auto model = load_flux_transformer(test::tiny_flux_pipeline() / "transformer", at::kFloat, at::kCPU);  // 4 heads
  auto expect_error = [&](const ContextParallelConfig& config, const std::string& part) {
    try {
      model->enable_parallelism(config, world_of(dist));
      ++failures;
      std::cout << "FAIL " << config.describe() << " was accepted" << std::endl;
    } catch (const Error& e) {
      const bool ok = std::string(e.what()).find(part) != std::string::npos;
      if (!ok) ++failures;
      std::cout << (ok ? "ok " : "FAIL ") << config.describe() << ": " << e.what() << std::endl;
    }
    if (model->parallel_mesh()) {
      ++failures;
      std::cout << "FAIL a mesh was kept after the error" << std::endl;
    }
  };
  expect_error({.ring_degree = 1, .ulysses_degree = 3}, "does not divide the 4 attention heads");
  expect_error({.ring_degree = 4, .ulysses_degree = 2}, "more than the world size 4");
  expect_error({.ring_degree = 1, .ulysses_degree = 1}, "both are 1");
  return failures == 0 ? 0 : 1;
}

// A whole call under CFG parallelism, as a user makes it: every rank loads the fixture's folder, makes
// the fixture's call alone (the single-process answer), then enables `config` and makes it again.
// Every step's latents must match the single-process ones on every rank, rank 0 alone decodes, and
// the ranks end bitwise equal. Then a call without guidance, which falls back (see the log line).
int run_cfg_pipeline(const std::string& fixture, const ParallelConfig& config) {
  Distributed dist = Distributed::init();
  const std::unique_ptr<DiffusionPipeline> pipe =
      load_pipeline(*test::fixtures_dir() / fixture / "pipeline", {.device = rank_device(dist).str()});
  GenerateRequest guided = test::fixture_request(fixture);
  // Without guidance: SD's guidance_scale 1, Qwen-Image's true_cfg_scale 1.
  GenerateRequest unguided = guided;
  if (guided.true_cfg_scale)
    unguided.true_cfg_scale = 1.0;
  else
    unguided.guidance_scale = 1.0;
  unguided.output_type = OutputType::Latent;
  auto recorder = [](std::vector<at::Tensor>& into) {
    return [&into](const StepInfo& step) {
      into.push_back(step.latents.clone());
      return true;
    };
  };
  std::vector<at::Tensor> steps_alone, steps;
  guided.callback = recorder(steps_alone);
  const GenerateOutput alone = pipe->generate(guided);
  const at::Tensor unguided_alone = pipe->generate(unguided).latents;

  pipe->enable_parallelism(config, dist.shared_communicator());
  guided.callback = recorder(steps);
  const GenerateOutput out = pipe->generate(guided);
  const std::string where = fixture + " " + config.describe() + ", rank " + std::to_string(dist.rank()) +
                            " (cfg index " + std::to_string(pipe->parallel_mesh()->cfg_index()) + ")";
  if (steps.size() != steps_alone.size()) {
    ++failures;
    std::cout << "FAIL " << where << ": " << steps.size() << " steps, alone " << steps_alone.size() << std::endl;
  }
  for (size_t i = 0; i < std::min(steps.size(), steps_alone.size()); ++i)
    check_close(steps[i], steps_alone[i], 1e-5, where + ": latents after step " + std::to_string(i) + " vs one process");
  check_close(out.latents, alone.latents, 1e-5, where + ": final latents vs one process");
  const SafetensorsFile reference(*test::fixtures_dir() / fixture / "reference.safetensors");
  check_close(out.latents, reference.load("latents_final"), 1e-4, where + ": final latents vs diffusers");
  const at::Tensor on_rank_0 = dist.communicator().broadcast(out.latents.contiguous(), 0);
  // Mesh members end bitwise equal; ranks past the mesh computed alone (to rounding).
  check_close(out.latents, on_rank_0, pipe->parallel_mesh()->active() ? 0 : 1e-5, where + ": final latents vs rank 0's");
  const bool has_image = out.image_tensor.defined();
  if (has_image != (dist.rank() == 0)) {
    ++failures;
    std::cout << "FAIL " << where << (has_image ? " decoded an image" : " has no image") << std::endl;
  }
  if (has_image) check_close(out.image_tensor, alone.image_tensor, 1e-5, where + ": image vs one process");

  check_close(pipe->generate(unguided).latents, unguided_alone, 1e-5, where + ": without guidance vs one process");
  return failures == 0 ? 0 : 1;
}

// Pipeline-level refusals, each before anything collective: the error names what is wrong, and no
// mesh is kept.
int run_cfg_config_errors() {
  Distributed dist = Distributed::init();
  const fs::path fixtures = *test::fixtures_dir();
  auto expect_error = [&](DiffusionPipeline& pipe, const ParallelConfig& config, const std::string& part) {
    const std::string what = pipe.class_name() + " " + config.describe();
    try {
      pipe.enable_parallelism(config, dist.shared_communicator());
      ++failures;
      std::cout << "FAIL " << what << " was accepted" << std::endl;
    } catch (const Error& e) {
      const bool ok = std::string(e.what()).find(part) != std::string::npos;
      if (!ok) ++failures;
      std::cout << (ok ? "ok " : "FAIL ") << what << ": " << e.what() << std::endl;
    }
    if (pipe.parallel_mesh()) {
      ++failures;
      std::cout << "FAIL a mesh was kept after the error" << std::endl;
    }
  };
  const std::unique_ptr<DiffusionPipeline> sd = load_pipeline(fixtures / "tiny-sd" / "pipeline");
  expect_error(*sd, {.cfg_degree = 2, .ulysses_degree = 2}, "a UNet has none to split");
  expect_error(*sd, {.ring_degree = 2}, "ring_degree 2 x ulysses_degree 1");
  const std::unique_ptr<DiffusionPipeline> flux = load_pipeline(test::tiny_flux_pipeline());
  expect_error(*flux, {.cfg_degree = 2}, "FLUX.1 runs none");
  const std::unique_ptr<DiffusionPipeline> qwen = load_pipeline(fixtures / "tiny-qwenimage" / "pipeline");  // 4 heads
  expect_error(*qwen, {.cfg_degree = 3}, "cfg_degree must be 1 or 2");
  expect_error(*qwen, {.cfg_degree = 2, .ring_degree = 4}, "= 8 is more than the world size 4");
  expect_error(*qwen, {.cfg_degree = 2, .ulysses_degree = 3}, "= 6 is more than the world size 4");
  expect_error(*qwen, {.ulysses_degree = 3}, "does not divide the 4 attention heads");
  expect_error(*qwen, {}, "all are 1");
  expect_error(*qwen, {.cfg_degree = 2, .ring_degree = 0}, "must be at least 1");
  return failures == 0 ? 0 : 1;
}

ParallelConfig parallel_config_from(char** argv) {
  return {.cfg_degree = std::stoll(argv[0]), .ring_degree = std::stoll(argv[1]), .ulysses_degree = std::stoll(argv[2])};
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  try {
    if (scenario == "attention" && argc > 3) return run_attention(config_from(argv[2], argv[3]));
    if (scenario == "transformer" && argc > 3) return run_transformer(config_from(argv[2], argv[3]));
    if (scenario == "pipeline" && argc > 3) return run_pipeline(config_from(argv[2], argv[3]));
    if (scenario == "config_errors") return run_config_errors();
    if (scenario == "cfg_pipeline" && argc > 5) return run_cfg_pipeline(argv[2], parallel_config_from(argv + 3));
    if (scenario == "cfg_config_errors") return run_cfg_config_errors();
    std::cerr << "usage: helper_context_parallel attention|transformer|pipeline RING ULYSSES | config_errors |\n"
                 "       cfg_pipeline FIXTURE CFG RING ULYSSES | cfg_config_errors\n";
    return 2;
  } catch (const Error& e) {
    std::cout << "error: " << e.what() << std::endl;
    return 3;
  } catch (const std::exception& e) {
    std::cout << "unexpected exception (not diffuse::Error): " << e.what() << std::endl;
    return 4;
  }
}
