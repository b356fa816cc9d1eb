// QwenImageTransformer2DModel against diffusers: the tiny Qwen-Image checkpoint on the reference
// call's first step (the conditional pass, and the negative pass through the true-CFG step the fixture
// recorded), in float32 and bfloat16; padded batches against single calls; device maps; and the
// errors for inputs and configs that do not fit.

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <set>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/models/attention.hpp"
#include "diffuse/models/key_padding.hpp"
#include "diffuse/models/qwenimage_rope.hpp"
#include "diffuse/models/qwenimage_transformer.hpp"
#include "diffuse/models/weights.hpp"
#include "diffuse/placement/dispatch.hpp"
#include "diffuse/placement/load_model.hpp"
#include "diffuse/placement/model_units.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

fs::path fixture_dir() { return *test::fixtures_dir() / "tiny-qwenimage"; }
fs::path transformer_dir() { return fixture_dir() / "pipeline" / "transformer"; }

#define REQUIRE_QWEN_FIXTURES()                                                                   \
  do {                                                                                            \
    DIFFUSE_REQUIRE_FIXTURES();                                                                   \
    if (!fs::exists(fixture_dir() / "reference.safetensors"))                                     \
      GTEST_SKIP() << "tiny-qwenimage fixtures not found at " << fixture_dir() << "; skipping";   \
  } while (0)

const SafetensorsFile& reference() {
  static const SafetensorsFile file(fixture_dir() / "reference.safetensors");
  return file;
}

const JsonConfig& reference_json() {
  static const JsonConfig json = JsonConfig::load(fixture_dir() / "reference.json");
  return json;
}

// reference.json's img_shapes: per batch item, a list of (frames, height, width).
std::vector<std::vector<QwenImageShape>> reference_img_shapes() {
  std::vector<std::vector<QwenImageShape>> shapes;
  for (const auto& item : reference_json().json().at("img_shapes")) {
    std::vector<QwenImageShape> images;
    for (const auto& fhw : item) images.push_back({fhw.at(0).get<int64_t>(), fhw.at(1).get<int64_t>(), fhw.at(2).get<int64_t>()});
    shapes.push_back(images);
  }
  return shapes;
}

// The prompt's (or negative prompt's) embeddings and mask as the pipeline passed them: no mask where
// reference.json says diffusers passed None.
struct TextInputs {
  at::Tensor embeds, mask;
};
TextInputs text_inputs(const std::string& name, c10::ScalarType dtype, c10::Device device) {
  TextInputs text{reference().load(name, dtype, device), at::Tensor()};
  if (!reference_json().get_bool(name + "_mask_is_none", false)) text.mask = reference().load(name + "_mask").to(device);
  return text;
}

QwenImageTransformerInputs reference_inputs(const std::string& prompt, c10::ScalarType dtype,
                                            c10::Device device = at::kCPU) {
  const TextInputs text = text_inputs(prompt, dtype, device);
  return {.hidden_states = reference().load("latents_init", dtype, device),
          .encoder_hidden_states = text.embeds,
          .encoder_hidden_states_mask = text.mask,
          .timestep = reference().load("transformer_timestep_step0", at::kFloat, device),  // the pipeline's t / 1000
          .img_shapes = reference_img_shapes()};
}

QwenImageTransformer2DModel load(c10::ScalarType dtype, c10::Device device = at::kCPU) {
  return load_model<QwenImageTransformer2DModel>(transformer_dir(), {.dtype = dtype, .device = device.str()});
}

void expect_error_containing(const std::function<void()>& call, const std::vector<std::string>& parts) {
  try {
    call();
    FAIL() << "expected a diffuse::Error";
  } catch (const Error& e) {
    for (const auto& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << "missing '" << part << "' in: " << e.what();
  }
}

// diffusers' true CFG: neg + s (cond - neg), rescaled per token to the conditional prediction's norm.
at::Tensor true_cfg(const at::Tensor& cond, const at::Tensor& neg, double scale) {
  const at::Tensor combined = neg + scale * (cond - neg);
  return combined * (at::linalg_vector_norm(cond, 2, {-1}, true) / at::linalg_vector_norm(combined, 2, {-1}, true));
}

}  // namespace

TEST(QwenImageTransformer, MatchesDiffusersOnStep0InFloat32) {
  REQUIRE_QWEN_FIXTURES();
  const c10::Device device = test::test_device();
  auto model = load(at::kFloat, device);
  at::NoGradGuard no_grad;
  const at::Tensor out = model->forward(reference_inputs("prompt_embeds", at::kFloat, device));
  EXPECT_EQ(out.device(), device);
  EXPECT_EQ(out.scalar_type(), at::kFloat);
  test::print_error("transformer_out_step0 (float32)", out, reference().load("transformer_out_step0"));
  EXPECT_TENSORS_CLOSE(out, reference().load("transformer_out_step0"), 1e-4);
}

// fuse_qkv_projections (one GEMM per stream over weights re-laid as views of one storage): the same
// outputs as three products, for the prompt and for the negative prompt (whose text mask pads), the
// checkpoint's names and values unchanged, and the prompt's output still diffusers'.
TEST(QwenImageTransformer, FusedQkvProjectionsGiveTheSameOutputs) {
  REQUIRE_QWEN_FIXTURES();
  const c10::Device device = test::test_device();
  auto model = load(at::kFloat, device);
  at::NoGradGuard no_grad;
  const auto inputs = reference_inputs("prompt_embeds", at::kFloat, device);
  const auto negative = reference_inputs("negative_prompt_embeds", at::kFloat, device);
  const at::Tensor separate = model->forward(inputs);
  const at::Tensor separate_negative = model->forward(negative);
  std::map<std::string, at::Tensor> before;
  for (const auto& p : model->named_parameters()) before[p.key()] = p.value().clone();

  EXPECT_FALSE(model->qkv_projections_fused());
  ASSERT_TRUE(model->fuse_qkv_projections());
  EXPECT_TRUE(model->qkv_projections_fused());
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(before.count(p.key())) << p.key();
    EXPECT_TRUE(at::equal(p.value(), before.at(p.key()))) << p.key();
  }
  EXPECT_EQ(model->named_parameters().size(), before.size());
  // cuBLAS may pick another kernel for the wider product; the CPU sums the same way.
  const double tolerance = device.is_cuda() ? 1e-5 : 1e-6;
  EXPECT_TENSORS_CLOSE(model->forward(inputs), separate, tolerance);
  EXPECT_TENSORS_CLOSE(model->forward(negative), separate_negative, tolerance);
  EXPECT_TENSORS_CLOSE(model->forward(inputs), reference().load("transformer_out_step0"), 1e-4);
}

TEST(QwenImageTransformer, TheTimestepIsTheSchedulersOver1000) {
  REQUIRE_QWEN_FIXTURES();
  EXPECT_NEAR(reference().load("timesteps")[0].item<double>() / 1000,
              reference().load("transformer_timestep_step0")[0].item<double>(), 1e-7);
}

// The fixture keeps no negative prediction, but its first true-CFG step follows from both passes:
// latents_after_step_0 = latents_init + (sigma_1 - sigma_0) * true_cfg(cond, neg, true_cfg_scale).
TEST(QwenImageTransformer, NegativePromptPassReproducesTheTrueCfgStep) {
  REQUIRE_QWEN_FIXTURES();
  const c10::Device device = test::test_device();
  auto model = load(at::kFloat, device);
  at::NoGradGuard no_grad;
  const QwenImageTransformerInputs negative = reference_inputs("negative_prompt_embeds", at::kFloat, device);
  ASSERT_NE(negative.encoder_hidden_states.size(1), reference().load("prompt_embeds").size(1));  // another length
  const at::Tensor cond = model->forward(reference_inputs("prompt_embeds", at::kFloat, device)).cpu();
  const at::Tensor neg = model->forward(negative).cpu();
  const at::Tensor noise_pred = true_cfg(cond, neg, reference_json().get_double("true_cfg_scale", 0));

  const at::Tensor sigmas = reference().load("sigmas");
  const at::Tensor latents = reference().load("latents_init"), after = reference().load("latents_after_step_0");
  const at::Tensor dt = sigmas[1] - sigmas[0];
  test::print_error("guided prediction vs (latents_after_step_0 - latents_init) / dt", noise_pred, (after - latents) / dt);
  EXPECT_TENSORS_CLOSE(noise_pred, (after - latents) / dt, 1e-4);
  test::print_error("latents_after_step_0", latents + dt * noise_pred, after);
  EXPECT_TENSORS_CLOSE(latents + dt * noise_pred, after, 1e-4);
}

TEST(QwenImageTransformer, RunsInBfloat16) {
  REQUIRE_QWEN_FIXTURES();
  const c10::Device device = test::test_device();
  auto model = load(at::kBFloat16, device);
  for (const auto& p : model->parameters()) ASSERT_EQ(p.scalar_type(), at::kBFloat16);
  at::NoGradGuard no_grad;
  const at::Tensor out = model->forward(reference_inputs("prompt_embeds", at::kBFloat16, device));
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::isfinite(out).all().item<bool>());
  // bfloat16 arithmetic, and the timestep rounded to bfloat16 as diffusers rounds it.
  test::print_error("bfloat16 vs the float32 reference", out, reference().load("transformer_out_step0"));
  EXPECT_TENSORS_CLOSE(out, reference().load("transformer_out_step0"), 3e-2);
}

// Two prompts of different lengths in one batch, the shorter padded (with garbage) and masked: each
// item is what its own call gives.
TEST(QwenImageTransformer, PaddedBatchWithMaskEqualsSingleCalls) {
  REQUIRE_QWEN_FIXTURES();
  const c10::Device device = test::test_device();
  auto model = load(at::kFloat, device);
  at::NoGradGuard no_grad;
  const QwenImageTransformerInputs cond = reference_inputs("prompt_embeds", at::kFloat, device);
  const QwenImageTransformerInputs neg = reference_inputs("negative_prompt_embeds", at::kFloat, device);
  const int64_t long_len = cond.encoder_hidden_states.size(1), short_len = neg.encoder_hidden_states.size(1);
  ASSERT_GT(long_len, short_len);
  const at::Tensor alone_cond = model->forward(cond), alone_neg = model->forward(neg);

  at::manual_seed(0);
  const at::Tensor garbage = 100 * at::randn({1, long_len - short_len, neg.encoder_hidden_states.size(2)}).to(device);
  QwenImageTransformerInputs batch = cond;
  batch.hidden_states = at::cat({cond.hidden_states, neg.hidden_states}, 0);
  batch.encoder_hidden_states = at::cat({cond.encoder_hidden_states, at::cat({neg.encoder_hidden_states, garbage}, 1)}, 0);
  batch.encoder_hidden_states_mask = at::ones({2, long_len}, at::kLong);
  batch.encoder_hidden_states_mask[1].narrow(0, short_len, long_len - short_len).zero_();
  batch.timestep = at::cat({cond.timestep, neg.timestep}, 0);
  batch.img_shapes = {cond.img_shapes[0], cond.img_shapes[0]};
  const at::Tensor out = model->forward(batch);
  ASSERT_EQ(out.size(0), 2);
  test::print_error("batch item 0 vs its single call", out[0], alone_cond[0]);
  test::print_error("batch item 1 (padded) vs its single call", out[1], alone_neg[0]);
  EXPECT_TENSORS_CLOSE(out[0], alone_cond[0], 1e-5);
  EXPECT_TENSORS_CLOSE(out[1], alone_neg[0], 1e-5);

  // A bool mask is the same; a mask with every token valid is the same as none.
  batch.encoder_hidden_states_mask = batch.encoder_hidden_states_mask.to(at::kBool);
  EXPECT_TRUE(at::equal(model->forward(batch), out));
  QwenImageTransformerInputs all_valid = cond;
  all_valid.encoder_hidden_states_mask = at::ones({1, long_len}, at::kBool);
  EXPECT_TRUE(at::equal(model->forward(all_valid), alone_cond));
  // The mask matters: without it the garbage is attended to.
  batch.encoder_hidden_states_mask = at::Tensor();
  EXPECT_GT(test::relative_error(model->forward(batch)[1], alone_neg[0]), 1e-3);
}

TEST(QwenImageTransformer, RegistersExactlyTheCheckpointsNames) {
  REQUIRE_QWEN_FIXTURES();
  QwenImageTransformer2DModel model(QwenImageTransformerConfig::from_file(transformer_dir() / "config.json"),
                                    at::TensorOptions());
  std::set<std::string> expected, actual;
  const Checkpoint checkpoint = Checkpoint::open(transformer_dir());
  for (const auto& info : checkpoint.tensors()) expected.insert(info.name);
  for (const auto& item : model->named_parameters()) actual.insert(item.key());
  EXPECT_EQ(actual, expected);
  EXPECT_TRUE(actual.contains("transformer_blocks.1.img_mod.1.weight"));
  EXPECT_TRUE(actual.contains("transformer_blocks.0.attn.norm_added_k.weight"));
}

TEST(QwenImageTransformer, UnitsSplitOverDevicesAndDisk) {
  REQUIRE_QWEN_FIXTURES();
  auto whole = load(at::kFloat);
  std::vector<std::string> names;
  for (const auto& u : model_units(*whole)) names.push_back(u.name);
  EXPECT_EQ(names, (std::vector<std::string>{"time_text_embed", "txt_norm", "img_in", "txt_in", "transformer_blocks.0",
                                             "transformer_blocks.1", "norm_out", "proj_out"}));
  EXPECT_GT(activation_estimate(*whole), 0u);

  // 1 MB of CPU memory holds the first units (and room for a disk unit to be read into); the rest is
  // read from disk when it runs.
  auto planned = load_model<QwenImageTransformer2DModel>(
      transformer_dir(), {.device_map = "auto", .max_memory = {{"cpu", "1MB"}, {"disk", "1GB"}}, .activation_memory = "0"});
  const DeviceMap map = planned->device_map();
  std::cout << "[ map ] " << map << "\n";
  EXPECT_EQ(map.at("time_text_embed"), "cpu");
  EXPECT_EQ(map.at("proj_out"), "disk");
  at::NoGradGuard no_grad;
  const at::Tensor expected = reference().load("transformer_out_step0");
  EXPECT_TENSORS_CLOSE(planned->forward(reference_inputs("prompt_embeds", at::kFloat)), expected, 1e-4);

  // An explicit map over the test device, the CPU and disk (on the GPU machine activations cross devices).
  const std::string main = test::test_device().str();
  auto mapped = load_model<QwenImageTransformer2DModel>(
      transformer_dir(), {.device_map = DeviceMap{{"", main}, {"transformer_blocks.0", "cpu"},
                                                  {"transformer_blocks.1", "disk"}, {"norm_out", "cpu"}}});
  const at::Tensor out = mapped->forward(reference_inputs("prompt_embeds", at::kFloat, test::test_device()));
  test::print_error("mapped transformer", out, expected);
  EXPECT_TENSORS_CLOSE(out, expected, 1e-4);
  // And with padded text (the key padding follows each block to its device).
  QwenImageTransformerInputs padded = reference_inputs("prompt_embeds", at::kFloat, test::test_device());
  padded.encoder_hidden_states_mask = at::ones({1, padded.encoder_hidden_states.size(1)}, at::kBool);
  padded.encoder_hidden_states_mask[0][3] = false;
  EXPECT_TENSORS_CLOSE(mapped->forward(padded), whole->forward([&] {
    QwenImageTransformerInputs cpu = reference_inputs("prompt_embeds", at::kFloat);
    cpu.encoder_hidden_states_mask = padded.encoder_hidden_states_mask.cpu();
    return cpu;
  }()), 1e-5);
}

TEST(QwenImageTransformer, NamesTheInputThatDoesNotFit) {
  REQUIRE_QWEN_FIXTURES();
  auto model = load(at::kFloat);
  at::NoGradGuard no_grad;
  auto with = [&](auto edit) {
    QwenImageTransformerInputs inputs = reference_inputs("prompt_embeds", at::kFloat);
    edit(inputs);
    return [&model, inputs] { model->forward(inputs); };
  };
  expect_error_containing(with([](auto& in) { in.hidden_states = at::zeros({1, 96, 8}); }),
                          {"hidden_states must be [batch, image_seq, 16]", "[1, 96, 8]"});
  expect_error_containing(with([](auto& in) { in.hidden_states = at::Tensor(); }), {"hidden_states is required"});
  expect_error_containing(with([](auto& in) { in.encoder_hidden_states = at::zeros({1, 53, 7}); }),
                          {"encoder_hidden_states must be [1, text_seq, 32]"});
  expect_error_containing(with([](auto& in) { in.encoder_hidden_states_mask = at::ones({1, 52}); }),
                          {"encoder_hidden_states_mask must be [1, 53]", "[1, 52]"});
  expect_error_containing(with([](auto& in) { in.encoder_hidden_states_mask = at::ones({53}); }),
                          {"encoder_hidden_states_mask"});
  expect_error_containing(with([](auto& in) { in.timestep = at::zeros({1, 1}); }), {"timestep must be [1]"});
  expect_error_containing(with([](auto& in) { in.img_shapes = {{{1, 8, 11}}}; }),
                          {"img_shapes [(1, 8, 11)] make 88 image tokens, but hidden_states has 96"});
  expect_error_containing(with([](auto& in) { in.img_shapes = {{{1, 8, 12}}, {{1, 8, 12}}}; }),
                          {"img_shapes has 2 entries for a batch of 1"});
  expect_error_containing(with([](auto& in) { in.img_shapes = {{{1, 0, 12}}}; }), {"not positive"});
  expect_error_containing(
      with([](auto& in) {
        in.hidden_states = in.hidden_states.repeat({2, 1, 1});
        in.encoder_hidden_states = in.encoder_hidden_states.repeat({2, 1, 1});
        in.timestep = in.timestep.repeat({2});
        in.img_shapes = {{{1, 8, 12}}, {{1, 12, 8}}};
      }),
      {"img_shapes differ between batch items"});
}

TEST(QwenImageTransformer, RefusesConfigsItDoesNotImplement) {
  REQUIRE_QWEN_FIXTURES();
  const std::string base = R"("_class_name": "QwenImageTransformer2DModel", "attention_head_dim": 16,
      "num_attention_heads": 4, "axes_dims_rope": [8, 4, 4])";
  auto config = [&](const std::string& extra) {
    return QwenImageTransformerConfig::from_json(JsonConfig::parse("{" + base + extra + "}", "config.json"));
  };
  EXPECT_EQ(config("").out_channels, 16);
  EXPECT_EQ(config(R"(, "in_channels": 8, "out_channels": null)").out_channels, 8);
  EXPECT_ERROR_CONTAINS(config(R"(, "zero_cond_t": true)"), "config.json: key 'zero_cond_t' is true");
  EXPECT_ERROR_CONTAINS(config(R"(, "use_layer3d_rope": true)"), "key 'use_layer3d_rope'");
  EXPECT_ERROR_CONTAINS(config(R"(, "use_additional_t_cond": true)"), "key 'use_additional_t_cond'");
  EXPECT_ERROR_CONTAINS(config(R"(, "axes_dims_rope": [8, 4, 6])"), "must sum to attention_head_dim (18 != 16)");
  EXPECT_ERROR_CONTAINS(config(R"(, "axes_dims_rope": [8, 8])"), "must have 3 entries");
  EXPECT_ERROR_CONTAINS(config(R"(, "num_layers": -1)"), "key 'num_layers' is -1");
  EXPECT_ERROR_CONTAINS(QwenImageTransformerConfig::from_json(
                            JsonConfig::parse(R"({"_class_name": "FluxTransformer2DModel"})", "config.json")),
                        "not QwenImageTransformer2DModel");
  // A checkpoint with fewer blocks than the config says is refused before any block is built.
  const fs::path folder = test::temporary_folder("qwenimage_transformer_three_layers");
  fs::copy(transformer_dir() / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.safetensors");
  nlohmann::json json = JsonConfig::load(transformer_dir() / "config.json").json();
  json["num_layers"] = 3;
  std::ofstream(folder / "config.json") << json.dump();
  EXPECT_ERROR_CONTAINS(load_model<QwenImageTransformer2DModel>(folder, {}), "num_layers is 3 but the weights hold 2");
}

TEST(QwenEmbedRope, CentresImagesAndPutsTextAfterThem) {
  // One 3x4 image: rows -2..0, columns -2..1; text from max(3/2, 4/2) = 2.
  const QwenImageRotaryEmbedding rope = qwenimage_rotary_embedding({{1, 3, 4}}, 5, {2, 2, 2}, at::kCPU);
  ASSERT_EQ(rope.image.phasor.sizes(), (c10::IntArrayRef{12, 3}));
  ASSERT_EQ(rope.text.phasor.sizes(), (c10::IntArrayRef{5, 3}));
  ASSERT_EQ(rope.image.cos.sizes(), (c10::IntArrayRef{12, 6}));
  // With 2 channels an axis turns by its position in radians (frequency 1).
  const at::Tensor angles = at::angle(rope.image.phasor);
  const int64_t token = 1 * 4 + 3;  // row 1 -> -1, column 3 -> 1
  EXPECT_NEAR(angles[token][0].item<double>(), 0, 1e-7);
  EXPECT_NEAR(angles[token][1].item<double>(), -1, 1e-6);
  EXPECT_NEAR(angles[token][2].item<double>(), 1, 1e-6);
  EXPECT_NEAR(angles[0][1].item<double>(), -2, 1e-6);
  EXPECT_NEAR(at::angle(rope.text.phasor)[1][0].item<double>(), 3, 1e-6);  // text token 1 at position 3, every axis
  EXPECT_NEAR(at::angle(rope.text.phasor)[1][2].item<double>(), 3, 1e-6);
  EXPECT_NEAR(rope.image.cos[token][2].item<double>(), std::cos(-1.0), 1e-6);
  EXPECT_NEAR(rope.image.cos[token][3].item<double>(), std::cos(-1.0), 1e-6);
  // A second image's frames start at frame index 1.
  const QwenImageRotaryEmbedding two = qwenimage_rotary_embedding({{1, 2, 2}, {1, 2, 2}}, 1, {2, 2, 2}, at::kCPU);
  EXPECT_NEAR(at::angle(two.image.phasor)[4][0].item<double>(), 1, 1e-6);
  // diffusers' tables end at 4096 positions.
  EXPECT_ERROR_CONTAINS(qwenimage_rotary_embedding({{1, 64, 64}}, 4096 - 31, {2, 2, 2}, at::kCPU),
                        "reach past diffusers' 4096 rotary positions");
  EXPECT_NO_THROW(qwenimage_rotary_embedding({{1, 64, 64}}, 4096 - 32, {2, 2, 2}, at::kCPU));
}

TEST(KeyPadding, EachItemAttendsToItsKeptKeysOnly) {
  at::manual_seed(5);
  const at::Tensor q = at::randn({2, 3, 7, 8}), k = at::randn({2, 3, 9, 8}), v = at::randn({2, 3, 9, 8});
  at::Tensor mask = at::ones({2, 9}, at::kBool);
  mask[0][2] = false;
  mask[0][8] = false;
  const KeyPadding padding(mask);
  EXPECT_TRUE(padding.any());
  EXPECT_FALSE(padding.kept(1).defined());
  const at::Tensor expected = math_attention(q, k, v, {.mask = mask.view({2, 1, 1, 9})});
  EXPECT_TENSORS_CLOSE(attention(q, k, v, 1 / std::sqrt(8.0), AttentionBackend::automatic, padding), expected, 1e-6);
  const PartialAttention part = attention_with_lse(q, k, v, 1 / std::sqrt(8.0), AttentionBackend::math, padding);
  EXPECT_TENSORS_CLOSE(part.out, expected, 1e-6);
  EXPECT_FALSE(KeyPadding(at::ones({2, 9})).any());
  EXPECT_EQ(padding.narrow(2, 3).keys(), 3);
  EXPECT_ERROR_CONTAINS(attention(q, k.narrow(2, 0, 8), v.narrow(2, 0, 8), 1.0, AttentionBackend::math, padding),
                        "key padding mask is [2, 9] for a batch of 2 over 8 keys");
}
