// Qwen-Image's text encoder, the language model of transformers' Qwen2_5_VLForConditionalGeneration,
// against transformers on the tiny-qwenimage fixtures: hidden_states[-1] of the templated prompt in
// float32 (and bfloat16 loosely), padded batches (left and right) row by row against each row alone,
// placement over "cpu" and "disk", the vision tower and lm_head left unread, and the errors of bad
// inputs and bad configs.

#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/models/qwen2_5_vl_text.hpp"
#include "diffuse/placement/load_model.hpp"
#include "diffuse/placement/model_units.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

constexpr double kParityTolerance = 1e-4;  // CPU float32, fixtures README
constexpr double kLowPrecisionTolerance = 3e-2;
// A padded row against the same row alone: the same arithmetic but for masked-out scores.
constexpr double kRowTolerance = 1e-5;

std::optional<fs::path> qwen_fixtures() {
  const auto dir = test::fixtures_dir();
  if (!dir || !fs::exists(*dir / "tiny-qwenimage" / "reference.safetensors")) return std::nullopt;
  return *dir / "tiny-qwenimage";
}

#define REQUIRE_QWEN_FIXTURES()                                                                         \
  do {                                                                                                  \
    if (!qwen_fixtures())                                                                               \
      GTEST_SKIP() << "tiny-qwenimage fixtures not found under " DIFFUSE_FIXTURES_DIR " (set "          \
                      "DIFFUSE_FIXTURES to their folder); skipping";                                    \
  } while (0)

fs::path encoder_folder() { return *qwen_fixtures() / "pipeline" / "text_encoder"; }

at::Tensor reference(const char* name) {
  static const SafetensorsFile file(*qwen_fixtures() / "reference.safetensors");
  return file.load(name);
}

void report(const std::string& what, double error) {
  std::printf("[ measured ] %-56s max rel error %.3e\n", what.c_str(), error);
}

Qwen2_5_VLTextModel load(c10::ScalarType dtype = at::kFloat) {
  return load_model<Qwen2_5_VLTextModel>(encoder_folder(), {.dtype = dtype, .device = test::test_device().str()});
}

// The checkpoint's language-model tensors: all but the vision tower and the LM head.
std::vector<std::string> language_model_names(const fs::path& folder) {
  const Checkpoint checkpoint = Checkpoint::open(folder);
  std::vector<std::string> names;
  for (const auto& info : checkpoint.tensors())
    if (info.name.rfind("visual.", 0) != 0 && info.name.rfind("lm_head.", 0) != 0) names.push_back(info.name);
  return names;
}

// A copy of the fixture's config.json with `edit` applied, beside the fixture's weights, in its own folder.
fs::path edited_folder(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json config = nlohmann::json::parse(std::ifstream(encoder_folder() / "config.json"));
  edit(config);
  const fs::path out = test::temporary_folder(name);
  std::ofstream(out / "config.json") << config.dump(2);
  fs::copy_file(encoder_folder() / "model.safetensors", out / "model.safetensors");
  return out;
}

std::string config_error(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  const fs::path folder = edited_folder(name, edit);
  return test::error_of([&] { Qwen2_5_VLTextConfig::from_file(folder / "config.json"); });
}

void expect_contains(const std::string& message, const std::vector<std::string>& parts) {
  for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message;
}

}  // namespace

TEST(Qwen2_5_VLTextModel, MatchesTransformersLastHiddenState) {
  REQUIRE_QWEN_FIXTURES();
  Qwen2_5_VLTextModel model = load();
  at::NoGradGuard no_grad;
  const at::Tensor out = model->forward(reference("qwen_input_ids"), reference("qwen_attention_mask"));
  const at::Tensor expected = reference("text_encoder_hidden_states_last");
  EXPECT_EQ(out.scalar_type(), at::kFloat);
  EXPECT_TENSORS_CLOSE(out, expected, kParityTolerance);
  report("hidden_states[-1] (float32)", test::relative_error(out, expected));
  // No mask means every token is real, as in transformers.
  EXPECT_TENSORS_CLOSE(model->forward(reference("qwen_input_ids")), expected, kParityTolerance);
}

TEST(Qwen2_5_VLTextModel, LoadsOnlyTheLanguageModel) {
  REQUIRE_QWEN_FIXTURES();
  Qwen2_5_VLTextModel model = load();
  const std::vector<std::string> expected = language_model_names(encoder_folder());
  std::vector<std::string> names;
  for (const auto& item : model->named_parameters()) names.push_back(item.key());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, expected);
  EXPECT_EQ(model->parameters().size(), expected.size());
  EXPECT_TRUE(model->named_buffers().is_empty()) << "rotary frequencies are computed, not stored";
  // The checkpoint does hold a vision tower and an LM head, which were skipped.
  const Checkpoint checkpoint = Checkpoint::open(encoder_folder());
  EXPECT_GT(checkpoint.tensors().size(), expected.size() + 1);
  EXPECT_TRUE(checkpoint.contains("lm_head.weight"));
  // Sizing from the headers counts what is loaded, not the vision tower.
  const WeightLoadOptions weights = model_weight_load_options<Qwen2_5_VLTextModel>(at::kFloat);
  EXPECT_EQ(checkpoint_bytes(checkpoint, at::kFloat, weights.keep_in_float32, weights.tied_aliases,
                             weights.ignored_prefixes),
            module_bytes(*model));
  EXPECT_LT(module_bytes(*model), checkpoint.total_bytes());
}

TEST(Qwen2_5_VLTextModel, LoadsInBFloat16CloseToFloat32) {
  REQUIRE_QWEN_FIXTURES();
  at::NoGradGuard no_grad;
  const at::Tensor ids = reference("qwen_input_ids"), mask = reference("qwen_attention_mask");
  Qwen2_5_VLTextModel model = load(at::kBFloat16);
  for (const auto& item : model->named_parameters()) EXPECT_EQ(item.value().scalar_type(), at::kBFloat16) << item.key();
  const at::Tensor out = model->forward(ids, mask);
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  const at::Tensor expected = reference("text_encoder_hidden_states_last");
  EXPECT_TENSORS_CLOSE(out, expected, kLowPrecisionTolerance);
  report("hidden_states[-1] (bfloat16 vs transformers float32)", test::relative_error(out, expected));
}

// Two prompts of different lengths in one batch, padded at the end (the tokenizer's default) and at the
// start: each row's real tokens get what they get alone, and padding never turns into NaN.
TEST(Qwen2_5_VLTextModel, PaddedRowsMatchEachRowAlone) {
  REQUIRE_QWEN_FIXTURES();
  Qwen2_5_VLTextModel model = load();
  at::NoGradGuard no_grad;
  const at::Tensor first = reference("qwen_input_ids");  // [1, L]
  const int64_t length = first.size(1);
  // The second prompt: the template's opening and a shorter stretch of the same ids.
  const int64_t short_length = length * 2 / 3;
  const at::Tensor second = at::cat({first.narrow(1, 0, 20), first.narrow(1, 30, short_length - 20)}, 1);
  const at::Tensor pad = at::full({1, length - short_length}, first[0][0].item<int64_t>(), first.options());
  const at::Tensor alone_first = model->forward(first, at::ones_like(first));
  const at::Tensor alone_second = model->forward(second, at::ones_like(second));

  for (bool left : {false, true}) {
    const std::string side = left ? "left" : "right";
    const at::Tensor padded = left ? at::cat({pad, second}, 1) : at::cat({second, pad}, 1);
    const at::Tensor padded_mask =
        left ? at::cat({at::zeros_like(pad), at::ones_like(second)}, 1)
             : at::cat({at::ones_like(second), at::zeros_like(pad)}, 1);
    const at::Tensor out = model->forward(at::cat({first, padded}), at::cat({at::ones_like(first), padded_mask}));
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, length, 32}));
    EXPECT_TRUE(out.isfinite().all().item<bool>()) << side << " padding gave non-finite values";
    const int64_t start = left ? length - short_length : 0;
    const at::Tensor real_second = out[1].narrow(0, start, short_length);
    EXPECT_TENSORS_CLOSE(out[0], alone_first[0], kRowTolerance);
    EXPECT_TENSORS_CLOSE(real_second, alone_second[0], kRowTolerance);
    report("row 0 of a " + side + "-padded batch vs alone", test::relative_error(out[0], alone_first[0]));
    report("row 1 (" + side + "-padded) vs alone", test::relative_error(real_second, alone_second[0]));
  }
  // The first row alone is still the fixture's.
  EXPECT_TENSORS_CLOSE(alone_first, reference("text_encoder_hidden_states_last"), kParityTolerance);
}

TEST(Qwen2_5_VLTextModel, PositionsFollowTheMaskAsTransformersTextOnlyRopeIndex) {
  const at::Tensor mask = at::tensor({0, 0, 1, 1, 1, 1, 1, 0}, at::kLong).view({2, 4});
  const at::Tensor positions = qwen2_5_vl_text_positions(mask);
  ASSERT_EQ(positions.sizes(), (std::vector<int64_t>{3, 2, 4}));
  const at::Tensor expected = at::tensor({1, 1, 0, 1, 0, 1, 2, 1}, at::kLong).view({2, 4});
  for (int axis = 0; axis < 3; ++axis) EXPECT_TRUE(at::equal(positions[axis], expected)) << positions;

  // Equal positions on all three axes: M-RoPE is the plain rotary embedding.
  const auto [cos, sin] = qwen2_5_vl_rotary_cos_sin(positions, 8, 10000.0, {2, 1, 1}, at::kFloat);
  ASSERT_EQ(cos.sizes(), (std::vector<int64_t>{2, 4, 8}));
  const at::Tensor inv_freq = 1.0 / at::pow(10000.0, at::arange(0, 8, 2, at::kLong).to(at::kFloat) / 8.0);
  const at::Tensor angles = expected.to(at::kFloat).unsqueeze(-1) * inv_freq;
  EXPECT_TRUE(at::allclose(cos, at::cat({angles, angles}, -1).cos()));
  EXPECT_TRUE(at::allclose(sin, at::cat({angles, angles}, -1).sin()));
  // Distinct axes: channel pairs 0-1 follow the temporal axis, 2 the height, 3 the width.
  const at::Tensor axes = at::stack({at::full({1, 1}, 5, at::kLong), at::full({1, 1}, 7, at::kLong),
                                     at::full({1, 1}, 11, at::kLong)});
  const auto [mixed_cos, mixed_sin] = qwen2_5_vl_rotary_cos_sin(axes, 8, 10000.0, {2, 1, 1}, at::kFloat);
  const at::Tensor pair_positions = at::tensor({5.0f, 5.0f, 7.0f, 11.0f});
  const at::Tensor half = (pair_positions * inv_freq).cos();
  EXPECT_TRUE(at::allclose(mixed_cos.view({8}), at::cat({half, half})));
  (void)mixed_sin;
}

TEST(Qwen2_5_VLTextModel, RejectsInputsItCannotEncode) {
  REQUIRE_QWEN_FIXTURES();
  Qwen2_5_VLTextModel model = load();
  at::NoGradGuard no_grad;
  const at::Tensor ids = reference("qwen_input_ids");
  const int64_t vocab = model->config().vocab_size;
  const at::Tensor too_high = ids.clone().index_fill_(1, at::full({1}, 3, at::kLong), vocab);
  expect_contains(test::error_of([&] { model->forward(too_high); }),
                  {std::to_string(vocab), "vocab_size " + std::to_string(vocab)});
  expect_contains(test::error_of([&] { model->forward(ids.clone().index_fill_(1, at::zeros({1}, at::kLong), -1)); }),
                  {"input id -1", "vocab_size"});
  expect_contains(test::error_of([&] { model->forward(ids, at::ones({1, ids.size(1) - 1}, at::kLong)); }),
                  {"attention_mask has shape [1, 86]", "input_ids [1, 87]"});
  expect_contains(test::error_of([&] { model->forward(ids[0]); }), {"[batch, tokens]", "[87]"});
  expect_contains(test::error_of([&] { model->forward(ids.to(at::kFloat)); }), {"integer token ids"});
  // A CUDA kernel named for CPU tensors says which and why.
  if (!test::test_device().is_cuda()) {
    model->set_attention_backend(AttentionBackend::flash);
    expect_contains(test::error_of([&] { model->forward(ids); }), {"attention backend 'flash'"});
  }
}

TEST(Qwen2_5_VLTextModel, ReadsTransformers5AndTransformers4Configs) {
  REQUIRE_QWEN_FIXTURES();
  const Qwen2_5_VLTextConfig c = Qwen2_5_VLTextConfig::from_file(encoder_folder() / "config.json");
  EXPECT_EQ(c.vocab_size, 1814);
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.intermediate_size, 48);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim(), 8);
  EXPECT_EQ(c.mrope_section, (std::vector<int64_t>{2, 1, 1}));
  EXPECT_DOUBLE_EQ(c.rope_theta, 1000000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.hidden_act, "silu");

  // transformers 4.x: the text settings at the top level, rope_scaling {"type": "mrope"} and rope_theta
  // beside it.
  const fs::path flat = edited_folder("qwen_text_flat_config", [](nlohmann::json& j) {
    nlohmann::json text = j["text_config"];
    j.erase("text_config");
    text.erase("rope_parameters");
    for (auto it = text.begin(); it != text.end(); ++it) j[it.key()] = it.value();
    j["rope_scaling"] = {{"type", "mrope"}, {"mrope_section", {2, 1, 1}}};
    j["rope_theta"] = 1000000.0;
  });
  const Qwen2_5_VLTextConfig f = Qwen2_5_VLTextConfig::from_file(flat / "config.json");
  EXPECT_EQ(f.num_key_value_heads, 2);
  EXPECT_EQ(f.mrope_section, c.mrope_section);
  EXPECT_DOUBLE_EQ(f.rope_theta, c.rope_theta);
  Qwen2_5_VLTextModel model = load_model<Qwen2_5_VLTextModel>(flat, {});
  at::NoGradGuard no_grad;
  EXPECT_TENSORS_CLOSE(model->forward(reference("qwen_input_ids")), reference("text_encoder_hidden_states_last"),
                       kParityTolerance);
}

TEST(Qwen2_5_VLTextModel, BadConfigValuesNameTheFileAndKey) {
  REQUIRE_QWEN_FIXTURES();
  expect_contains(config_error("qwen_missing_hidden", [](nlohmann::json& j) { j["text_config"].erase("hidden_size"); }),
                  {"config.json", "text_config.hidden_size", "missing"});
  expect_contains(config_error("qwen_heads", [](nlohmann::json& j) { j["text_config"]["num_key_value_heads"] = 3; }),
                  {"config.json", "num_key_value_heads", "not a divisor of num_attention_heads 4"});
  expect_contains(config_error("qwen_hidden", [](nlohmann::json& j) { j["text_config"]["hidden_size"] = 30; }),
                  {"hidden_size", "not a multiple of num_attention_heads"});
  expect_contains(config_error("qwen_mrope", [](nlohmann::json& j) {
                    j["text_config"]["rope_parameters"]["mrope_section"] = {2, 2, 1};
                  }),
                  {"config.json", "text_config.rope_parameters.mrope_section", "head_dim / 2 = 4"});
  expect_contains(config_error("qwen_no_mrope", [](nlohmann::json& j) {
                    j["text_config"]["rope_parameters"].erase("mrope_section");
                  }),
                  {"text_config.rope_parameters.mrope_section", "missing"});
  expect_contains(config_error("qwen_rope_type", [](nlohmann::json& j) {
                    j["text_config"]["rope_parameters"]["rope_type"] = "yarn";
                  }),
                  {"rope_type", "yarn"});
  expect_contains(config_error("qwen_vocab", [](nlohmann::json& j) { j["text_config"]["vocab_size"] = "many"; }),
                  {"config.json", "vocab_size", "an integer"});
  expect_contains(config_error("qwen_eps", [](nlohmann::json& j) { j["text_config"]["rms_norm_eps"] = -1.0; }),
                  {"rms_norm_eps", "not a positive number"});
  expect_contains(config_error("qwen_act", [](nlohmann::json& j) { j["text_config"]["hidden_act"] = "nope"; }),
                  {"hidden_act", "nope"});
  expect_contains(config_error("qwen_sliding",
                               [](nlohmann::json& j) { j["text_config"]["use_sliding_window"] = true; }),
                  {"use_sliding_window", "not supported"});
  // A layer count the checkpoint does not hold is refused before anything is built.
  const fs::path layers =
      edited_folder("qwen_layers", [](nlohmann::json& j) { j["text_config"]["num_hidden_layers"] = 3; });
  expect_contains(test::error_of([&] { load_model<Qwen2_5_VLTextModel>(layers, {}); }),
                  {"config.json", "text_config.num_hidden_layers is 3", "hold 2 blocks"});
}

TEST(Qwen2_5_VLTextModel, RunsSpreadOverCpuAndDisk) {
  REQUIRE_QWEN_FIXTURES();
  at::NoGradGuard no_grad;
  const at::Tensor ids = reference("qwen_input_ids"), mask = reference("qwen_attention_mask");
  const at::Tensor expected = reference("text_encoder_hidden_states_last");

  Qwen2_5_VLTextModel model = load();
  std::vector<std::string> units;
  for (const auto& unit : model_units(*model)) units.push_back(unit.name);
  EXPECT_EQ(units, (std::vector<std::string>{"model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm"}));
  EXPECT_GT(model->activation_estimate(), 0u);

  // Every unit read from disk when it runs, but one layer kept on the CPU.
  Qwen2_5_VLTextModel spread = load_model<Qwen2_5_VLTextModel>(
      encoder_folder(), {.device_map = DeviceMap{{"", "disk"}, {"model.layers.1", "cpu"}}});
  EXPECT_EQ(spread->device_map().at("model.embed_tokens"), "disk");
  EXPECT_TENSORS_CLOSE(spread->forward(ids, mask), expected, kParityTolerance);

  // Planned: a CPU budget below the embedding's size puts every unit on disk, each read when it runs.
  Qwen2_5_VLTextModel planned = load_model<Qwen2_5_VLTextModel>(
      encoder_folder(),
      {.device_map = "auto", .max_memory = {{"cpu", "150KB"}, {"disk", "1GB"}}, .activation_memory = "0"});
  EXPECT_EQ(planned->device_map().devices(), (std::vector<std::string>{"disk"}));
  EXPECT_TENSORS_CLOSE(planned->forward(ids, mask), expected, kParityTolerance);
}
