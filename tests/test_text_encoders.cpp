// FLUX.1's two text encoders against transformers: CLIPTextModel (pooled prompt embedding) and
// T5EncoderModel (the prompt sequence), loaded by name from the tiny-flux fixtures, in float32 to
// float32 rounding and in bfloat16/float16 loosely; and the errors a checkpoint that does not fit gives.

#include <torch/version.h>

#include <algorithm>
#include <cstdio>
#include <functional>

#include "diffuse/error.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/t5_encoder.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

constexpr double kParityTolerance = 1e-4;     // CPU float32, fixtures README
constexpr double kLowPrecisionTolerance = 3e-2;

fs::path clip_folder() { return test::tiny_flux_pipeline() / "text_encoder"; }
fs::path t5_folder() { return test::tiny_flux_pipeline() / "text_encoder_2"; }
at::Tensor reference(const char* name) { return test::tiny_flux_reference().load(name); }

void report(const char* what, double error) { std::printf("[ measured ] %-48s max rel error %.3e\n", what, error); }

// Every tensor of `folder`'s model.safetensors, for writing modified copies.
std::vector<std::pair<std::string, at::Tensor>> fixture_tensors(const fs::path& folder) {
  SafetensorsFile file(folder / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& info : file.tensors()) tensors.emplace_back(info.name, file.load(info.name));
  return tensors;
}

// A model folder holding `folder`'s config.json and `tensors` as model.safetensors.
fs::path write_model_folder(const std::string& name, const fs::path& folder,
                            const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  fs::path out = test::temporary_folder(name);
  fs::copy_file(folder / "config.json", out / "config.json");
  save_safetensors(out / "model.safetensors", tensors);
  return out;
}

void expect_error_naming(const std::function<void()>& load, const std::vector<std::string>& parts) {
  try {
    load();
    ADD_FAILURE() << "expected diffuse::Error";
  } catch (const Error& e) {
    for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// libtorch 1.13's CPU kernels lack float16 matmul and layer norm; those runs need 2.x or a GPU.
bool float16_runs_on_cpu() {
#if TORCH_VERSION_MAJOR >= 2
  return true;
#else
  try {
    at::Tensor a = at::ones({2, 2}, at::kHalf);
    (void)at::layer_norm(at::matmul(a, a), {2});
    return true;
  } catch (const c10::Error&) {
    return false;
  }
#endif
}

void expect_all_parameters(const torch::nn::Module& module, c10::ScalarType dtype,
                           const std::vector<std::string>& float32_parts = {}) {
  for (const auto& item : module.named_parameters()) {
    bool keep = false;
    for (const auto& part : float32_parts) keep = keep || item.key().find("." + part + ".") != std::string::npos;
    EXPECT_EQ(item.value().scalar_type(), keep ? at::kFloat : dtype) << item.key();
  }
}

}  // namespace

// ---- CLIP ------------------------------------------------------------------------------------------

TEST(ClipTextModel, MatchesTransformersLastHiddenStateAndPooledOutput) {
  DIFFUSE_REQUIRE_FIXTURES();
  ClipTextModel model = load_clip_text_model(clip_folder(), at::kFloat, at::kCPU);
  at::NoGradGuard no_grad;
  ClipTextOutput out = model->forward(reference("clip_input_ids"));
  EXPECT_TENSORS_CLOSE(out.last_hidden_state, reference("clip_last_hidden_state"), kParityTolerance);
  EXPECT_TENSORS_CLOSE(out.pooler_output, reference("pooled_prompt_embeds"), kParityTolerance);
  report("CLIP last_hidden_state (float32)", test::relative_error(out.last_hidden_state, reference("clip_last_hidden_state")));
  report("CLIP pooler_output (float32)", test::relative_error(out.pooler_output, reference("pooled_prompt_embeds")));
}

TEST(ClipTextModel, RegistersExactlyTheCheckpointNames) {
  DIFFUSE_REQUIRE_FIXTURES();
  ClipTextModel model = load_clip_text_model(clip_folder(), at::kFloat, at::kCPU);
  SafetensorsFile file(clip_folder() / "model.safetensors");
  std::vector<std::string> names;
  for (const auto& item : model->named_parameters()) names.push_back(item.key());
  std::sort(names.begin(), names.end());
  std::vector<std::string> expected;
  for (const auto& info : file.tensors()) expected.push_back(info.name);
  EXPECT_EQ(names, expected);
  EXPECT_TRUE(model->named_buffers().is_empty()) << "position ids are computed, not stored";
}

TEST(ClipTextModel, LoadsInBFloat16AndFloat16CloseToFloat32) {
  DIFFUSE_REQUIRE_FIXTURES();
  at::NoGradGuard no_grad;
  const at::Tensor ids = reference("clip_input_ids");
  ClipTextOutput full = load_clip_text_model(clip_folder(), at::kFloat, at::kCPU)->forward(ids);
  for (c10::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    ClipTextModel model = load_clip_text_model(clip_folder(), dtype, at::kCPU);
    expect_all_parameters(*model, dtype);
    if (dtype == at::kHalf && !float16_runs_on_cpu()) {
      std::printf("[ skipped  ] CLIP float16 forward: libtorch %s lacks float16 CPU kernels (loading checked)\n",
                  TORCH_VERSION);
      continue;
    }
    ClipTextOutput out = model->forward(ids);
    EXPECT_EQ(out.last_hidden_state.scalar_type(), dtype);
    EXPECT_TENSORS_CLOSE(out.last_hidden_state, full.last_hidden_state, kLowPrecisionTolerance);
    EXPECT_TENSORS_CLOSE(out.pooler_output, full.pooler_output, kLowPrecisionTolerance);
    const std::string name = std::string("CLIP last_hidden_state (") + c10::toString(dtype) + " vs float32)";
    report(name.c_str(), test::relative_error(out.last_hidden_state, full.last_hidden_state));
  }
}

TEST(ClipTextModel, PoolsAtTheFirstEndOfTextTokenOfEachRow) {
  ClipTextConfig config;
  config.vocab_size = 64;
  config.hidden_size = 16;
  config.intermediate_size = 24;
  config.num_hidden_layers = 1;
  config.num_attention_heads = 2;
  config.max_position_embeddings = 8;
  config.eos_token_id = 63;
  ClipTextModel model(config, at::TensorOptions().dtype(at::kFloat));
  init_random_parameters(*model, 7);
  at::NoGradGuard no_grad;
  // Padding repeats eos (as FLUX.1's CLIP tokenizer pads); the first one counts.
  at::Tensor ids = at::tensor({5, 9, 63, 63, 63, 63, 63, 63, 5, 9, 11, 12, 63, 63, 63, 63}, at::kLong).view({2, 8});
  ClipTextOutput out = model->forward(ids);
  EXPECT_TRUE(at::equal(out.pooler_output[0], out.last_hidden_state[0][2]));
  EXPECT_TRUE(at::equal(out.pooler_output[1], out.last_hidden_state[1][4]));

  // eos_token_id == 2 is transformers' legacy rule: the position of the largest id.
  config.eos_token_id = 2;
  ClipTextModel legacy(config, at::TensorOptions().dtype(at::kFloat));
  init_random_parameters(*legacy, 7);
  at::Tensor legacy_ids = at::tensor({5, 40, 2, 2, 2, 2, 2, 2}, at::kLong).view({1, 8});
  ClipTextOutput legacy_out = legacy->forward(legacy_ids);
  EXPECT_TRUE(at::equal(legacy_out.pooler_output[0], legacy_out.last_hidden_state[0][1]));
}

TEST(ClipTextModel, IsCausal) {
  ClipTextConfig config;
  config.vocab_size = 64;
  config.hidden_size = 16;
  config.intermediate_size = 24;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.max_position_embeddings = 8;
  ClipTextModel model(config, at::TensorOptions().dtype(at::kFloat));
  init_random_parameters(*model, 3);
  at::NoGradGuard no_grad;
  at::Tensor a = at::tensor({1, 2, 3, 4, 5, 6}, at::kLong).view({1, 6});
  at::Tensor b = at::tensor({1, 2, 3, 40, 50, 60}, at::kLong).view({1, 6});
  at::Tensor ha = model->forward(a).last_hidden_state, hb = model->forward(b).last_hidden_state;
  EXPECT_TRUE(at::allclose(ha.slice(1, 0, 3), hb.slice(1, 0, 3))) << "earlier tokens must not see later ones";
  EXPECT_FALSE(at::allclose(ha.slice(1, 3), hb.slice(1, 3)));
}

TEST(ClipTextModel, RejectsInputsItCannotEmbed) {
  ClipTextConfig config;
  config.vocab_size = 64;
  config.hidden_size = 16;
  config.intermediate_size = 24;
  config.num_hidden_layers = 1;
  config.num_attention_heads = 2;
  config.max_position_embeddings = 8;
  ClipTextModel model(config, at::TensorOptions().dtype(at::kFloat));
  init_random_parameters(*model, 1);
  expect_error_naming([&] { model->forward(at::zeros({1, 9}, at::kLong)); }, {"9 tokens", "max_position_embeddings 8"});
  expect_error_naming([&] { model->forward(at::zeros({9}, at::kLong)); }, {"[batch, tokens]"});
  config.hidden_act = "no_such_activation";
  expect_error_naming([&] { ClipTextModel bad(config, at::TensorOptions()); }, {"no_such_activation"});
}

TEST(ClipTextModel, CheckpointThatDoesNotFitNamesTheTensors) {
  DIFFUSE_REQUIRE_FIXTURES();
  auto tensors = fixture_tensors(clip_folder());

  auto missing = tensors;
  std::erase_if(missing, [](const auto& t) { return t.first == "encoder.layers.1.mlp.fc2.bias"; });
  fs::path folder = write_model_folder("clip_missing", clip_folder(), missing);
  expect_error_naming([&] { load_clip_text_model(folder, at::kFloat, at::kCPU); },
                      {"missing from the checkpoint", "encoder.layers.1.mlp.fc2.bias", "clip_missing"});

  auto extra = tensors;
  extra.emplace_back("text_projection.weight", at::zeros({32, 32}));
  folder = write_model_folder("clip_extra", clip_folder(), extra);
  expect_error_naming([&] { load_clip_text_model(folder, at::kFloat, at::kCPU); },
                      {"not in the model", "text_projection.weight"});

  auto wrong_shape = tensors;
  for (auto& [name, tensor] : wrong_shape)
    if (name == "embeddings.position_embedding.weight") tensor = at::zeros({76, 32});
  folder = write_model_folder("clip_shape", clip_folder(), wrong_shape);
  expect_error_naming([&] { load_clip_text_model(folder, at::kFloat, at::kCPU); },
                      {"shape mismatch", "embeddings.position_embedding.weight", "[76, 32]", "[77, 32]"});
}

// ---- T5 --------------------------------------------------------------------------------------------

TEST(T5EncoderModel, MatchesTransformersLastHiddenState) {
  DIFFUSE_REQUIRE_FIXTURES();
  T5EncoderModel model = load_t5_encoder(t5_folder(), at::kFloat, at::kCPU);
  at::NoGradGuard no_grad;
  at::Tensor out = model->forward(reference("t5_input_ids"));
  EXPECT_TENSORS_CLOSE(out, reference("t5_last_hidden_state"), kParityTolerance);
  EXPECT_TENSORS_CLOSE(out, reference("prompt_embeds"), kParityTolerance);
  report("T5 last_hidden_state (float32)", test::relative_error(out, reference("t5_last_hidden_state")));
  report("T5 vs prompt_embeds (float32)", test::relative_error(out, reference("prompt_embeds")));
}

TEST(T5EncoderModel, RegistersExactlyTheCheckpointNames) {
  DIFFUSE_REQUIRE_FIXTURES();
  T5EncoderModel model = load_t5_encoder(t5_folder(), at::kFloat, at::kCPU);
  SafetensorsFile file(t5_folder() / "model.safetensors");
  std::vector<std::string> names;
  for (const auto& item : model->named_parameters()) names.push_back(item.key());
  std::sort(names.begin(), names.end());
  std::vector<std::string> expected;
  for (const auto& info : file.tensors()) expected.push_back(info.name);
  EXPECT_EQ(names, expected);
}

TEST(T5EncoderModel, LoadsInBFloat16AndFloat16CloseToFloat32) {
  DIFFUSE_REQUIRE_FIXTURES();
  at::NoGradGuard no_grad;
  const at::Tensor ids = reference("t5_input_ids");
  at::Tensor full = load_t5_encoder(t5_folder(), at::kFloat, at::kCPU)->forward(ids);
  for (c10::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    T5EncoderModel model = load_t5_encoder(t5_folder(), dtype, at::kCPU);
    // transformers keeps `wo` in float32 under float16 only.
    expect_all_parameters(*model, dtype, dtype == at::kHalf ? std::vector<std::string>{"wo"} : std::vector<std::string>{});
    if (dtype == at::kHalf && !float16_runs_on_cpu()) {
      std::printf("[ skipped  ] T5 float16 forward: libtorch %s lacks float16 CPU kernels (loading checked)\n",
                  TORCH_VERSION);
      continue;
    }
    at::Tensor out = model->forward(ids);
    EXPECT_EQ(out.scalar_type(), dtype);  // the final norm returns the weight's dtype
    EXPECT_TENSORS_CLOSE(out, full, kLowPrecisionTolerance);
    const std::string name = std::string("T5 last_hidden_state (") + c10::toString(dtype) + " vs float32)";
    report(name.c_str(), test::relative_error(out, full));
  }
}

TEST(T5EncoderModel, AcceptsTheTiedEmbedTokensCopy) {
  DIFFUSE_REQUIRE_FIXTURES();
  // Real FLUX.1 checkpoints also store encoder.embed_tokens.weight, a copy of shared.weight.
  auto tensors = fixture_tensors(t5_folder());
  at::Tensor shared;
  for (const auto& [name, tensor] : tensors)
    if (name == "shared.weight") shared = tensor;
  tensors.emplace_back("encoder.embed_tokens.weight", shared.clone());
  fs::path folder = write_model_folder("t5_tied", t5_folder(), tensors);
  T5EncoderModel model = load_t5_encoder(folder, at::kFloat, at::kCPU);
  at::NoGradGuard no_grad;
  EXPECT_TENSORS_CLOSE(model->forward(reference("t5_input_ids")), reference("t5_last_hidden_state"), kParityTolerance);
}

TEST(T5EncoderModel, CheckpointThatDoesNotFitNamesTheTensors) {
  DIFFUSE_REQUIRE_FIXTURES();
  auto tensors = fixture_tensors(t5_folder());

  auto missing = tensors;
  std::erase_if(missing, [](const auto& t) { return t.first == "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"; });
  fs::path folder = write_model_folder("t5_missing", t5_folder(), missing);
  expect_error_naming([&] { load_t5_encoder(folder, at::kFloat, at::kCPU); },
                      {"missing from the checkpoint", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"});

  auto extra = tensors;
  extra.emplace_back("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight", at::zeros({32, 4}));
  folder = write_model_folder("t5_extra", t5_folder(), extra);
  expect_error_naming([&] { load_t5_encoder(folder, at::kFloat, at::kCPU); },
                      {"not in the model", "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"});

  auto wrong_shape = tensors;
  for (auto& [name, tensor] : wrong_shape)
    if (name == "encoder.block.1.layer.1.DenseReluDense.wi_0.weight") tensor = at::zeros({63, 32});
  folder = write_model_folder("t5_shape", t5_folder(), wrong_shape);
  expect_error_naming([&] { load_t5_encoder(folder, at::kFloat, at::kCPU); },
                      {"shape mismatch", "encoder.block.1.layer.1.DenseReluDense.wi_0.weight", "[63, 32]", "[64, 32]"});
}

TEST(T5EncoderModel, RelativePositionBucketsAreBidirectionalAndLogarithmic) {
  // 32 buckets, max distance 128: 16 per direction, 8 exact, then log-spaced, saturating at 15.
  at::Tensor relative = at::tensor({0, 1, -1, 7, -7, 8, -20, 200, -128, -1000}, at::kLong);
  at::Tensor buckets = t5_relative_position_bucket(relative, 32, 128);
  at::Tensor expected = at::tensor({0, 17, 1, 23, 7, 24, 10, 31, 15, 15}, at::kLong);
  EXPECT_TRUE(at::equal(buckets, expected)) << buckets;
}

TEST(T5EncoderModel, PlainReluFeedForwardHasWiAndWo) {
  T5Config config;
  config.vocab_size = 16;
  config.d_model = 8;
  config.d_kv = 4;
  config.d_ff = 12;
  config.num_layers = 2;
  config.num_heads = 2;
  ASSERT_FALSE(config.is_gated_act);
  T5EncoderModel model(config, at::TensorOptions().dtype(at::kFloat));
  auto params = model->named_parameters();
  EXPECT_TRUE(params.contains("encoder.block.1.layer.1.DenseReluDense.wi.weight"));
  EXPECT_FALSE(params.contains("encoder.block.1.layer.1.DenseReluDense.wi_0.weight"));
  EXPECT_TRUE(params.contains("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"));
  EXPECT_FALSE(params.contains("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"));
  init_random_parameters(*model, 5);
  at::NoGradGuard no_grad;
  at::Tensor out = model->forward(at::tensor({3, 4, 5, 1}, at::kLong).view({1, 4}));
  EXPECT_EQ(out.sizes(), (c10::IntArrayRef{1, 4, 8}));
  EXPECT_TRUE(at::isfinite(out).all().item<bool>());
}
