// FluxTransformer2DModel against diffusers: the tiny FLUX checkpoint on the reference call's first
// step, in float32 and bfloat16; the guidance-free variant (FLUX.1-schnell's shape); and the errors
// for inputs and checkpoints that do not fit.

#include <functional>
#include <iostream>
#include <set>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/models/embeddings.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/weights.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

// The reference call's step-0 inputs, in `dtype` on `device`.
FluxTransformerInputs reference_inputs(c10::ScalarType dtype, c10::Device device = at::kCPU) {
  const SafetensorsFile& ref = test::tiny_flux_reference();
  return {.hidden_states = ref.load("latents_init", dtype, device),
          .encoder_hidden_states = ref.load("prompt_embeds", dtype, device),
          .pooled_projections = ref.load("pooled_prompt_embeds", dtype, device),
          .timestep = ref.load("transformer_timestep_step0", at::kFloat, device),  // the pipeline passes float32
          .img_ids = ref.load("latent_image_ids", dtype, device),
          .txt_ids = ref.load("text_ids", dtype, device),
          .guidance = ref.load("transformer_guidance", at::kFloat, device)};
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

FluxTransformerConfig schnell_shaped_tiny_config() {
  auto config = FluxTransformerConfig::from_file(test::tiny_flux_pipeline() / "transformer" / "config.json");
  config.guidance_embeds = false;
  return config;
}

}  // namespace

TEST(FluxTransformer, MatchesDiffusersOnStep0InFloat32) {
  DIFFUSE_REQUIRE_FIXTURES();
  const c10::Device device = test::test_device();
  auto model = load_flux_transformer(test::tiny_flux_pipeline() / "transformer", at::kFloat, device);
  at::NoGradGuard no_grad;
  at::Tensor out = model->forward(reference_inputs(at::kFloat, device));
  at::Tensor expected = test::tiny_flux_reference().load("transformer_out_step0");
  EXPECT_EQ(out.device(), device);
  std::cout << "float32 on " << device << " vs float32 reference: max relative error "
            << test::relative_error(out, expected) << "\n";
  EXPECT_EQ(out.scalar_type(), at::kFloat);
  EXPECT_TENSORS_CLOSE(out, expected, 1e-4);
}

TEST(FluxTransformer, MatchesDiffusersOnStep0InBfloat16) {
  DIFFUSE_REQUIRE_FIXTURES();
  const c10::Device device = test::test_device();
  const fs::path folder = test::tiny_flux_pipeline() / "transformer";
  auto model = load_flux_transformer(folder, at::kBFloat16, device);
  for (const auto& p : model->parameters()) ASSERT_EQ(p.scalar_type(), at::kBFloat16);
  at::NoGradGuard no_grad;
  at::Tensor out = model->forward(reference_inputs(at::kBFloat16, device));
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::isfinite(out).all().item<bool>());

  // Timestep and guidance are scaled in float32 (not rounded to bfloat16 first, as diffusers does),
  // so only the bfloat16 arithmetic separates this from the float32 reference.
  at::Tensor reference = test::tiny_flux_reference().load("transformer_out_step0");
  const double vs_reference = test::relative_error(out, reference);
  std::cout << "bfloat16 on " << device << " vs float32 reference: max relative error " << vs_reference << "\n";
  EXPECT_TENSORS_CLOSE(out, reference, 2e-2);
}

TEST(FluxTransformer, RegistersDiffusersNames) {
  DIFFUSE_REQUIRE_FIXTURES();
  FluxTransformer2DModel model(schnell_shaped_tiny_config(), at::TensorOptions());
  auto params = model->named_parameters();
  for (const char* name :
       {"x_embedder.weight", "context_embedder.bias", "time_text_embed.timestep_embedder.linear_2.weight",
        "time_text_embed.text_embedder.linear_1.weight", "transformer_blocks.1.attn.to_out.0.weight",
        "transformer_blocks.0.ff.net.0.proj.weight", "transformer_blocks.0.ff_context.net.2.bias",
        "transformer_blocks.0.attn.norm_added_k.weight", "single_transformer_blocks.1.norm.linear.weight",
        "single_transformer_blocks.0.attn.norm_q.weight", "norm_out.linear.weight", "proj_out.bias"})
    EXPECT_TRUE(params.contains(name)) << name;
  EXPECT_FALSE(params.contains("time_text_embed.guidance_embedder.linear_1.weight"));
  EXPECT_FALSE(params.contains("single_transformer_blocks.0.attn.to_out.0.weight"));  // pre_only
  // Exactly the checkpoint's names, less the guidance embedder.
  std::set<std::string> expected;
  const Checkpoint checkpoint = Checkpoint::open(test::tiny_flux_pipeline() / "transformer");
  for (const auto& info : checkpoint.tensors())
    if (info.name.rfind("time_text_embed.guidance_embedder.", 0) != 0) expected.insert(info.name);
  std::set<std::string> actual;
  for (const auto& item : params) actual.insert(item.key());
  EXPECT_EQ(actual, expected);
}

TEST(FluxTransformer, WithoutGuidanceEmbedsRunsAndRejectsAGuidanceCheckpoint) {
  DIFFUSE_REQUIRE_FIXTURES();
  FluxTransformer2DModel model(schnell_shaped_tiny_config(), at::TensorOptions());
  init_random_parameters(*model, 0);
  FluxTransformerInputs inputs = reference_inputs(at::kFloat);
  inputs.guidance = at::Tensor();
  at::NoGradGuard no_grad;
  at::Tensor out = model->forward(inputs);
  EXPECT_EQ(out.sizes(), (c10::IntArrayRef{1, 24, 16}));
  EXPECT_TRUE(at::isfinite(out).all().item<bool>());

  // The real checkpoint (FLUX.1-dev's shape) has the guidance embedder this model lacks.
  Checkpoint checkpoint = Checkpoint::open(test::tiny_flux_pipeline() / "transformer");
  expect_error_containing([&] { load_weights(*model, checkpoint, {}); },
                          {"not in the model", "time_text_embed.guidance_embedder.linear_1.weight",
                           "time_text_embed.guidance_embedder.linear_2.bias"});
  // And a guidance value it cannot embed.
  expect_error_containing([&] { model->forward(reference_inputs(at::kFloat)); },
                          {"guidance", "guidance_embeds = false"});
}

TEST(FluxTransformer, NamesTheInputThatDoesNotFit) {
  DIFFUSE_REQUIRE_FIXTURES();
  auto model = load_flux_transformer(test::tiny_flux_pipeline() / "transformer", at::kFloat, at::kCPU);
  at::NoGradGuard no_grad;
  auto with = [&](auto edit) {
    FluxTransformerInputs inputs = reference_inputs(at::kFloat);
    edit(inputs);
    return [&model, inputs] { model->forward(inputs); };
  };
  expect_error_containing(with([](auto& in) { in.guidance = at::Tensor(); }), {"guidance is required"});
  expect_error_containing(with([](auto& in) { in.hidden_states = at::zeros({1, 24, 8}); }), {"hidden_states", "16"});
  expect_error_containing(with([](auto& in) { in.encoder_hidden_states = at::zeros({1, 32, 7}); }),
                          {"encoder_hidden_states"});
  expect_error_containing(with([](auto& in) { in.pooled_projections = at::zeros({2, 32}); }), {"pooled_projections"});
  expect_error_containing(with([](auto& in) { in.timestep = at::zeros({1, 1}); }), {"timestep"});
  expect_error_containing(with([](auto& in) { in.img_ids = at::zeros({23, 3}); }), {"img_ids", "[24, 3]"});
  expect_error_containing(with([](auto& in) { in.txt_ids = at::zeros({32, 2}); }), {"txt_ids", "[32, 3]"});
  expect_error_containing(with([](auto& in) { in.txt_ids = at::Tensor(); }), {"txt_ids is required"});
}

TEST(FluxTransformer, AcceptsIdsWithABatchDimensionAsDiffusersDoes) {
  DIFFUSE_REQUIRE_FIXTURES();
  auto model = load_flux_transformer(test::tiny_flux_pipeline() / "transformer", at::kFloat, at::kCPU);
  at::NoGradGuard no_grad;
  FluxTransformerInputs inputs = reference_inputs(at::kFloat);
  at::Tensor plain = model->forward(inputs);
  inputs.img_ids = inputs.img_ids.unsqueeze(0);
  inputs.txt_ids = inputs.txt_ids.unsqueeze(0);
  EXPECT_TRUE(at::equal(model->forward(inputs), plain));
}

TEST(FluxTransformer, LoadErrorsNameTheFolder) {
  DIFFUSE_REQUIRE_FIXTURES();
  fs::path empty = test::temporary_folder("flux_transformer_empty");
  expect_error_containing([&] { load_flux_transformer(empty, at::kFloat, at::kCPU); }, {"config.json"});
}

TEST(RotaryEmbedding, MatchesTheClosedFormAndRotatesPairs) {
  // One axis of 4 channels at positions 0..2: angles p * 10000^(-0/4), p * 10000^(-2/4), each repeated.
  at::Tensor pos = at::arange(3, at::kFloat);
  RotaryEmbedding rope = rotary_embedding_1d(4, pos);
  ASSERT_EQ(rope.cos.sizes(), (c10::IntArrayRef{3, 4}));
  EXPECT_EQ(rope.cos.scalar_type(), at::kFloat);
  const double f1 = 1.0 / 100.0;
  EXPECT_NEAR(rope.cos[2][0].item<double>(), std::cos(2.0), 1e-7);
  EXPECT_NEAR(rope.sin[2][1].item<double>(), std::sin(2.0), 1e-7);
  EXPECT_NEAR(rope.sin[2][3].item<double>(), std::sin(2.0 * f1), 1e-7);

  // Rotating (1, 0) by angle a gives (cos a, sin a); (0, 1) gives (-sin a, cos a).
  at::Tensor x = at::tensor({1.0f, 0.0f, 0.0f, 1.0f}).view({1, 1, 1, 4}).expand({1, 1, 3, 4}).contiguous();
  at::Tensor y = apply_rotary_emb(x, rope);
  EXPECT_NEAR(y[0][0][1][0].item<double>(), std::cos(1.0), 1e-6);
  EXPECT_NEAR(y[0][0][1][1].item<double>(), std::sin(1.0), 1e-6);
  EXPECT_NEAR(y[0][0][1][2].item<double>(), -std::sin(f1), 1e-6);
  EXPECT_NEAR(y[0][0][1][3].item<double>(), std::cos(f1), 1e-6);

  // FluxPosEmbed concatenates the axes; a wrong axis count is an error.
  RotaryEmbedding flux = flux_pos_embed(at::zeros({5, 3}), {4, 6, 6});
  EXPECT_EQ(flux.cos.sizes(), (c10::IntArrayRef{5, 16}));
  EXPECT_TRUE(at::equal(flux.cos, at::ones({5, 16})));
  EXPECT_THROW(flux_pos_embed(at::zeros({5, 2}), {4, 6, 6}), Error);
}

TEST(TimestepEmbedding, IsCosThenSinWithGeometricFrequencies) {
  at::Tensor t = at::tensor({0.0f, 500.0f});
  at::Tensor e = timestep_embedding(t, 8, /*flip_sin_to_cos=*/true, 0);
  ASSERT_EQ(e.sizes(), (c10::IntArrayRef{2, 8}));
  EXPECT_NEAR(e[0][0].item<double>(), 1.0, 0);  // cos(0)
  EXPECT_NEAR(e[0][4].item<double>(), 0.0, 0);  // sin(0)
  EXPECT_NEAR(e[1][1].item<double>(), std::cos(500.0 * std::exp(-std::log(10000.0) / 4)), 1e-4);
  EXPECT_NEAR(e[1][5].item<double>(), std::sin(500.0 * std::exp(-std::log(10000.0) / 4)), 1e-4);
  EXPECT_THROW(timestep_embedding(at::zeros({2, 1}), 8, true, 0), Error);
}

// On CUDA in bfloat16 with head_dim 128 (FLUX.1's), attention prepares q and k with one fused kernel
// (RMSNorm per head and rotary, straight into the joint buffer). It must give what the composition of
// ATen operations gives, for both block forms, and the float32 math path within bf16 rounding.
TEST(FluxAttention, FusedNormAndRotaryMatchTheComposition) {
  const c10::Device device = test::test_device();
  if (!device.is_cuda()) GTEST_SKIP() << "the fused kernel runs on CUDA (DIFFUSE_TEST_DEVICE=cuda)";
  at::NoGradGuard no_grad;
  const int64_t heads = 4, head_dim = 128, dim = heads * head_dim;
  for (bool dual : {true, false}) {
    FluxAttention attention(dim, heads, head_dim, /*added_kv=*/dual, at::TensorOptions(at::kFloat).device(device));
    init_random_parameters(*attention, 11);
    // RMSNorm weights away from 1, so that a missing weight would show.
    for (auto& p : attention->named_parameters())
      if (p.key().find("norm") != std::string::npos) p.value().uniform_(0.5, 1.5);
    at::manual_seed(3);
    const at::Tensor image = at::randn({2, 37, dim}, at::TensorOptions(device));
    const at::Tensor text = dual ? at::randn({2, 9, dim}, at::TensorOptions(device)) : at::Tensor();
    const int64_t total = 37 + (dual ? 9 : 0);
    const at::Tensor ids = at::randint(0, 64, {total, 3}, at::TensorOptions(device).dtype(at::kFloat));
    const RotaryEmbedding rotary = flux_pos_embed(ids, {16, 56, 56});
    const RotaryEmbedding without_phasor{rotary.cos, rotary.sin, at::Tensor()};

    const FluxAttentionOutput exact = attention(image, text, without_phasor);  // float32, composed
    attention->to(at::kBFloat16);
    const at::Tensor image16 = image.to(at::kBFloat16), text16 = dual ? text.to(at::kBFloat16) : at::Tensor();
    const FluxAttentionOutput fused = attention(image16, text16, rotary);
    const FluxAttentionOutput composed = attention(image16, text16, without_phasor);
    SCOPED_TRACE(dual ? "dual-stream" : "single-stream");
    EXPECT_TENSORS_CLOSE(fused.hidden_states, composed.hidden_states, 1e-2);
    EXPECT_TENSORS_CLOSE(fused.hidden_states, exact.hidden_states, 2e-2);
    test::print_error(dual ? "fused vs composed, dual" : "fused vs composed, single", fused.hidden_states,
                      composed.hidden_states);
    if (dual) EXPECT_TENSORS_CLOSE(fused.encoder_hidden_states, composed.encoder_hidden_states, 1e-2);
  }
}
