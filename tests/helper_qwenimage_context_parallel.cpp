// One rank of a Qwen-Image context-parallel test (tests/test_qwenimage_context_parallel.cpp starts 2 or
// 4, with torchrun's variables set; CPU over Gloo). Each scenario compares its results with the
// single-process answer it computes itself and exits
//   0  all checks passed ("ok ..." lines give the errors measured)
//   1  a check failed (the line says which)
//   3  a diffuse::Error was thrown (its message is printed after "error: ")
//
//   helper_qwenimage_context_parallel attention RING ULYSSES     context_parallel_attention with padded keys
//   helper_qwenimage_context_parallel transformer RING ULYSSES   the tiny Qwen-Image transformer: fixture,
//                                                                uneven shards, padded batches
//   helper_qwenimage_context_parallel config_errors              (4 ranks) bad configs are refused

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "diffuse/distributed/distributed.hpp"
#include "diffuse/error.hpp"
#include "diffuse/models/qwenimage_transformer.hpp"
#include "diffuse/parallel/context_parallel.hpp"
#include "diffuse/parallel/sequence_shards.hpp"
#include "diffuse/placement/load_model.hpp"
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

c10::Device rank_device(Distributed& dist) { return test::test_device().is_cuda() ? dist.device() : c10::Device(at::kCPU); }

ContextParallelConfig config_from(const char* ring, const char* ulysses) {
  ContextParallelConfig config;
  config.ring_degree = std::stoll(ring);
  config.ulysses_degree = std::stoll(ulysses);
  return config;
}

// Padded keys over the mesh: item 0 loses a scattered few, item 1 keeps only its last key (so that
// ranks attend to blocks with nothing left in them, first and in a row).
int run_attention(const ContextParallelConfig& config) {
  Distributed dist = Distributed::init();
  const ContextParallelMesh mesh(dist.shared_communicator(), config, /*num_heads=*/4);
  for (int64_t length : {15, 37, 8, 3}) {
    at::manual_seed(2000 + length);
    const at::Tensor q = at::randn({2, 4, length, 8}, at::kDouble).to(at::kFloat);
    const at::Tensor k = at::randn({2, 4, length, 8}, at::kDouble).to(at::kFloat);
    const at::Tensor v = at::randn({2, 4, length, 8}, at::kDouble).to(at::kFloat);
    at::Tensor mask = at::ones({2, length}, at::kBool);
    for (int64_t i = 1; i < length; i += 3) mask[0][i] = false;
    mask[1].narrow(0, 0, length - 1).fill_(false);
    const double scale = 1.0 / std::sqrt(8.0);
    at::Tensor scores = at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(-2, -1)) * scale;
    scores = scores.masked_fill(mask.logical_not().view({2, 1, 1, length}), -INFINITY);
    const at::Tensor expected = at::softmax(scores, -1).matmul(v.to(at::kDouble)).to(at::kFloat);
    // Ranks outside the mesh (a mesh smaller than the world) hold the whole sequence. The shards are
    // contiguous in mesh-rank order, so the mask over the mesh's keys is the mask as it is.
    const int64_t parts = mesh.active() ? mesh.degree() : 1, index = mesh.active() ? mesh.rank() : 0;
    const c10::Device device = rank_device(dist);
    auto shard = [&](const at::Tensor& t) { return take_shard(t, 2, parts, index).contiguous().to(device); };
    for (bool with_lengths : {true, false}) {
      ContextParallelAttentionOptions options{.key_padding = KeyPadding(mask)};
      if (with_lengths) options.lengths = shard_sizes(length, parts);
      const at::Tensor out = context_parallel_attention(shard(q), shard(k), shard(v), mesh, scale, options);
      check_close(out, take_shard(expected, 2, parts, index), 1e-5,
                  config.describe() + " attention with padded keys, " + std::to_string(length) + " tokens" +
                      (with_lengths ? "" : ", lengths exchanged"));
    }
  }
  return failures == 0 ? 0 : 1;
}

fs::path fixture_dir() { return *test::fixtures_dir() / "tiny-qwenimage"; }

const SafetensorsFile& reference() {
  static const SafetensorsFile file(fixture_dir() / "reference.safetensors");
  return file;
}

QwenImageTransformerInputs reference_inputs(const std::string& prompt, c10::Device device) {
  // The fixture's img_shapes ([[(1, 8, 12)]]; tests/test_qwenimage_transformer.cpp reads them from
  // reference.json) for its 96 image tokens; both prompts are whole (diffusers passed no mask).
  const at::Tensor latents = reference().load("latents_init", at::kFloat, device);
  return {.hidden_states = latents,
          .encoder_hidden_states = reference().load(prompt, at::kFloat, device),
          .encoder_hidden_states_mask = at::Tensor(),
          .timestep = reference().load("transformer_timestep_step0", at::kFloat, device),
          .img_shapes = {{{1, 8, 12}}}};
}

// Two prompts of different lengths as one batch: the shorter padded with garbage and masked.
QwenImageTransformerInputs padded_batch(const QwenImageTransformerInputs& a, const QwenImageTransformerInputs& b) {
  const int64_t long_len = a.encoder_hidden_states.size(1), short_len = b.encoder_hidden_states.size(1);
  at::manual_seed(0);
  const at::Tensor garbage =
      100 * at::randn({1, long_len - short_len, b.encoder_hidden_states.size(2)}).to(b.encoder_hidden_states.device());
  QwenImageTransformerInputs batch = a;
  batch.hidden_states = at::cat({a.hidden_states, b.hidden_states}, 0);
  batch.encoder_hidden_states = at::cat({a.encoder_hidden_states, at::cat({b.encoder_hidden_states, garbage}, 1)}, 0);
  batch.encoder_hidden_states_mask = at::ones({2, long_len}, at::kLong);
  batch.encoder_hidden_states_mask[1].narrow(0, short_len, long_len - short_len).zero_();
  batch.timestep = at::cat({a.timestep, b.timestep}, 0);
  batch.img_shapes = {a.img_shapes[0], a.img_shapes[0]};
  return batch;
}

// The first `tokens` image tokens as an image of shape (1, height, width).
QwenImageTransformerInputs cropped(QwenImageTransformerInputs in, int64_t height, int64_t width) {
  in.hidden_states = in.hidden_states.narrow(1, 0, height * width);
  in.img_shapes = std::vector<std::vector<QwenImageShape>>(in.img_shapes.size(), {{1, height, width}});
  return in;
}

int run_transformer(const ContextParallelConfig& config) {
  Distributed dist = Distributed::init();
  at::NoGradGuard no_grad;
  const c10::Device device = rank_device(dist);
  auto model = load_model<QwenImageTransformer2DModel>(fixture_dir() / "pipeline" / "transformer",
                                                       {.dtype = at::kFloat, .device = device.str()});
  const QwenImageTransformerInputs cond = reference_inputs("prompt_embeds", device);
  const QwenImageTransformerInputs neg = reference_inputs("negative_prompt_embeds", device);
  // Uneven shards: 15 image tokens (5 x 3) and 29 text tokens (over 4 ranks: 4 4 4 3 and 8 7 7 7).
  QwenImageTransformerInputs uneven = cropped(cond, 5, 3);
  uneven.encoder_hidden_states = cond.encoder_hidden_states.narrow(1, 0, 29);
  const QwenImageTransformerInputs batch = padded_batch(cond, neg);
  // 3 image tokens: over 4 ranks the last holds text alone, all of it padding for the second prompt.
  const QwenImageTransformerInputs few = cropped(batch, 1, 3);
  struct Case {
    std::string name;
    QwenImageTransformerInputs inputs;
    at::Tensor alone;
  };
  std::vector<Case> cases = {{"the fixture's prompt", cond, {}},
                             {"the negative prompt (46 text tokens)", neg, {}},
                             {"15 image + 29 text tokens", uneven, {}},
                             {"a batch of 53 and 46 text tokens, padded and masked", batch, {}},
                             {"that batch over 3 image tokens", few, {}}};
  for (Case& c : cases) c.alone = model->forward(c.inputs);

  model->enable_parallelism(config, dist.shared_communicator());
  const std::string where = config.describe() + ", rank " + std::to_string(dist.rank());
  check_close(model->forward(cond), reference().load("transformer_out_step0"), 1e-4,
              where + ": transformer vs transformer_out_step0");
  for (const Case& c : cases) check_close(model->forward(c.inputs), c.alone, 1e-5, where + ": " + c.name + " vs one process");
  model->disable_parallelism();
  check_close(model->forward(batch), cases[3].alone, 0, where + ": after disable_parallelism");
  return failures == 0 ? 0 : 1;
}

int run_config_errors() {
  Distributed dist = Distributed::init();
  auto model = load_model<QwenImageTransformer2DModel>(fixture_dir() / "pipeline" / "transformer", {});  // 4 heads
  auto expect_error = [&](const ContextParallelConfig& config, const std::string& part) {
    try {
      model->enable_parallelism(config, dist.shared_communicator());
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

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  try {
    if (scenario == "attention" && argc > 3) return run_attention(config_from(argv[2], argv[3]));
    if (scenario == "transformer" && argc > 3) return run_transformer(config_from(argv[2], argv[3]));
    if (scenario == "config_errors") return run_config_errors();
    std::cerr << "usage: helper_qwenimage_context_parallel attention|transformer RING ULYSSES | config_errors\n";
    return 2;
  } catch (const Error& e) {
    std::cout << "error: " << e.what() << std::endl;
    return 3;
  } catch (const std::exception& e) {
    std::cout << "unexpected exception (not diffuse::Error): " << e.what() << std::endl;
    return 4;
  }
}
