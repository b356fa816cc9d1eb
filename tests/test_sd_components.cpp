// Stable Diffusion's components against diffusers on the tiny-sd fixture (an SD 1.5-shaped pipeline):
// the UNet on the reference call's first step (float32 within 1e-4, also under a device map, in
// float64 and bfloat16), the VAE with its quant convs, CLIP and its tokenizer; the UNet configs of the
// real SD 1.5 and SD 2.1 (built on the meta device, parameter counts as published); the shared blocks;
// and the configs that are refused, by name.

#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <regex>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/io/inspect.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/feed_forward.hpp"
#include "diffuse/models/resnet.hpp"
#include "diffuse/models/sampling.hpp"
#include "diffuse/models/unet_2d_condition.hpp"
#include "diffuse/models/weights.hpp"
#include "diffuse/placement/load_model.hpp"
#include "diffuse/placement/model_units.hpp"
#include "diffuse/tokenizers/clip_tokenizer.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

// tiny-sd sits beside tiny-flux; a fixture set from before it existed skips these tests.
#define REQUIRE_TINY_SD()                                                                                     \
  do {                                                                                                        \
    DIFFUSE_REQUIRE_FIXTURES();                                                                               \
    if (!fs::exists(*test::fixtures_dir() / "tiny-sd" / "reference.safetensors"))                             \
      GTEST_SKIP() << "tiny-sd is not in the fixtures at " << test::fixtures_dir()->string() << "; skipping"; \
  } while (0)

fs::path tiny_sd() { return *test::fixtures_dir() / "tiny-sd" / "pipeline"; }

const SafetensorsFile& reference() {
  static const SafetensorsFile file(*test::fixtures_dir() / "tiny-sd" / "reference.safetensors");
  return file;
}

// The first UNet call of the reference (the doubled CFG batch), in `dtype` on `device`.
struct UNetCall {
  at::Tensor sample, timestep, encoder_hidden_states;
};
UNetCall step0(c10::ScalarType dtype, c10::Device device) {
  return {reference().load("unet_sample_step0", dtype, device),
          reference().load("unet_timestep_step0", at::kFloat, device),
          reference().load("unet_encoder_hidden_states_step0", dtype, device)};
}

UNet2DConditionModel& tiny_unet() {
  static UNet2DConditionModel unet = load_unet_2d_condition(tiny_sd() / "unet", at::kFloat, test::test_device());
  return unet;
}

at::Tensor run(UNet2DConditionModel& unet, const UNetCall& call) {
  at::NoGradGuard no_grad;
  return unet->forward(call.sample, call.timestep, call.encoder_hidden_states);
}

// A folder with the tiny UNet's weights and `config` as its config.json.
fs::path unet_folder_with_config(const std::string& name, const std::string& config) {
  const fs::path folder = test::temporary_folder(name);
  fs::copy_file(tiny_sd() / "unet" / "diffusion_pytorch_model.safetensors",
                folder / "diffusion_pytorch_model.safetensors");
  std::ofstream(folder / "config.json") << config;
  return folder;
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The tiny UNet's config.json with `key`'s value replaced by `value` (JSON text).
std::string tiny_config_with(const std::string& key, const std::string& value) {
  const std::string text = read_text(tiny_sd() / "unet" / "config.json");
  const std::regex entry("\"" + key + "\": (\\[[^\\]]*\\]|[^,\\n]*)");
  EXPECT_TRUE(std::regex_search(text, entry)) << key;
  return std::regex_replace(text, entry, "\"" + key + "\": " + value);
}

// runwayml/stable-diffusion-v1-5 unet/config.json (diffusers' SD 1.5 layout).
constexpr const char* kSd15Config = R"({
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
  "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
  "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]})";

// stabilityai/stable-diffusion-2-1 unet/config.json: heads listed per block, linear projections.
constexpr const char* kSd21Config = R"({
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
  "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false, "cross_attention_dim": 1024,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
  "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
  "num_class_embeds": null, "only_cross_attention": false, "out_channels": 4, "sample_size": 96,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "upcast_attention": true, "use_linear_projection": true})";

int64_t parameter_count(const torch::nn::Module& module) {
  int64_t total = 0;
  for (const auto& p : module.parameters()) total += p.numel();
  return total;
}

}  // namespace

// ---- the UNet ------------------------------------------------------------------------------------

TEST(UNet2DConditionModel, MatchesDiffusersOnStep0InFloat32) {
  REQUIRE_TINY_SD();
  const c10::Device device = test::test_device();
  const at::Tensor out = run(tiny_unet(), step0(at::kFloat, device));
  const at::Tensor expected = reference().load("unet_out_step0");
  EXPECT_EQ(out.device(), device);
  EXPECT_EQ(out.scalar_type(), at::kFloat);
  test::print_error("UNet step 0 (8x12 latent, CFG batch 2) vs diffusers", out, expected);
  EXPECT_TENSORS_CLOSE(out, expected, 1e-4);
}

TEST(UNet2DConditionModel, TimestepAsScalarOrPerSampleOrIntegerIsTheSame) {
  REQUIRE_TINY_SD();
  const UNetCall call = step0(at::kFloat, test::test_device());
  const at::Tensor base = run(tiny_unet(), call);
  const float t = call.timestep.item<float>();
  ASSERT_EQ(t, std::round(t));  // PNDM's timesteps are integers
  for (const at::Tensor& timestep :
       {call.timestep.reshape({}), call.timestep.expand({2}).contiguous(), call.timestep.to(at::kLong),
        at::scalar_tensor(static_cast<int64_t>(t), at::kLong)}) {
    const at::Tensor out = run(tiny_unet(), {call.sample, timestep, call.encoder_hidden_states});
    EXPECT_TRUE(at::equal(out, base)) << "timestep " << timestep;
  }
  // Per-sample timesteps do differ per sample.
  const at::Tensor two = at::stack({call.timestep[0], call.timestep[0] - 100}).to(call.sample.device());
  const at::Tensor mixed = run(tiny_unet(), {call.sample, two, call.encoder_hidden_states});
  EXPECT_TRUE(at::equal(mixed[0], base[0]));
  EXPECT_FALSE(at::allclose(mixed[1], base[1]));
}

TEST(UNet2DConditionModel, Float64AndBFloat16StayClose) {
  REQUIRE_TINY_SD();
  const c10::Device device = test::test_device();
  const at::Tensor expected = reference().load("unet_out_step0");
  if (device.is_cpu()) {
    UNet2DConditionModel unet = load_unet_2d_condition(tiny_sd() / "unet", at::kDouble, device);
    const at::Tensor out = run(unet, step0(at::kDouble, device));
    EXPECT_EQ(out.scalar_type(), at::kDouble);
    test::print_error("UNet in float64 vs diffusers float32", out, expected);
    EXPECT_TENSORS_CLOSE(out, expected, 1e-4);
  }
  UNet2DConditionModel unet = load_unet_2d_condition(tiny_sd() / "unet", at::kBFloat16, device);
  const at::Tensor out = run(unet, step0(at::kBFloat16, device));
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::isfinite(out).all().item<bool>());
  test::print_error("UNet in bfloat16 vs diffusers float32", out, expected);
  EXPECT_TENSORS_CLOSE(out, expected, 5e-2);
}

TEST(UNet2DConditionModel, MathAttentionBackendGivesTheSameOutput) {
  REQUIRE_TINY_SD();
  UNet2DConditionModel unet = load_unet_2d_condition(tiny_sd() / "unet", at::kFloat, test::test_device());
  unet->set_attention_backend(AttentionBackend::math);
  EXPECT_EQ(unet->attention_backend(), AttentionBackend::math);
  const at::Tensor out = run(unet, step0(at::kFloat, test::test_device()));
  test::print_error("UNet with math attention vs diffusers", out, reference().load("unet_out_step0"));
  EXPECT_TENSORS_CLOSE(out, reference().load("unet_out_step0"), 1e-4);
}

TEST(UNet2DConditionModel, HasExactlyTheCheckpointNames) {
  REQUIRE_TINY_SD();
  const Checkpoint checkpoint = Checkpoint::open(tiny_sd() / "unet");
  UNet2DConditionModel unet(tiny_unet()->config(), at::TensorOptions().dtype(at::kFloat).device(c10::kMeta));
  const auto params = unet->named_parameters();
  EXPECT_EQ(params.size(), checkpoint.tensors().size());
  for (const auto& info : checkpoint.tensors()) EXPECT_NE(params.find(info.name), nullptr) << info.name;
  // The tiny config is SD 1.5's layout: heads of 16/2 and 32/2 channels, GEGLU, conv projections.
  for (const char* name : {"down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight",
                           "down_blocks.2.downsamplers.0.conv.weight", "mid_block.attentions.0.proj_in.weight",
                           "up_blocks.0.resnets.2.conv_shortcut.weight", "up_blocks.2.upsamplers.0.conv.weight",
                           "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight"})
    EXPECT_NE(params.find(name), nullptr) << name;
  EXPECT_EQ(params["down_blocks.0.attentions.0.proj_in.weight"].dim(), 4);  // a 1x1 conv (SD 1.x)
  EXPECT_EQ(params["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"].sizes(),
            (std::vector<int64_t>{16, 32}));  // cross_attention_dim 32 -> 16 channels
}

TEST(UNet2DConditionModel, UnderADeviceMapGivesTheSameOutput) {
  REQUIRE_TINY_SD();
  const fs::path folder = tiny_sd() / "unet";
  const at::Tensor base = run(tiny_unet(), step0(at::kFloat, test::test_device()));
  // Units on "cpu" and on "disk" alternate, so the skip connections cross units on every level.
  UNet2DConditionModel mapped =
      load_model<UNet2DConditionModel>(folder, {.device_map = DeviceMap{{"", "cpu"},
                                                                        {"down_blocks.1", "disk"},
                                                                        {"mid_block", "disk"},
                                                                        {"up_blocks.2", "disk"},
                                                                        {"conv_out", "disk"}}});
  std::cout << "[ map ] " << mapped->device_map() << "\n";
  EXPECT_EQ(mapped->device_map().at("time_proj"), "cpu");
  EXPECT_EQ(mapped->device_map().at("up_blocks.2"), "disk");
  EXPECT_EQ(mapped->conv_out->weight.numel(), 0);  // read when it runs
  const at::Tensor out = run(mapped, step0(at::kFloat, c10::kCPU));
  test::print_error("UNet under a cpu/disk device map vs unmapped", out, base);
  if (test::test_device().is_cpu()) {
    EXPECT_TRUE(at::equal(out, base));
  }
  EXPECT_TENSORS_CLOSE(out, reference().load("unet_out_step0"), 1e-4);
  EXPECT_EQ(mapped->conv_out->weight.numel(), 0);  // released after

  // Planned: 1 MB of CPU memory for the first units, the rest from disk.
  UNet2DConditionModel planned = load_model<UNet2DConditionModel>(
      folder, {.device_map = "auto", .max_memory = {{"cpu", "1MB"}, {"disk", "1GB"}}, .activation_memory = "0"});
  std::cout << "[ map ] " << planned->device_map() << "\n";
  EXPECT_EQ(planned->device_map().devices(), (std::vector<std::string>{"cpu", "disk"}));
  const at::Tensor planned_out = run(planned, step0(at::kFloat, c10::kCPU));
  EXPECT_TENSORS_CLOSE(planned_out, reference().load("unet_out_step0"), 1e-4);
}

TEST(UNet2DConditionModel, UnitsAreTheBlocksInTheOrderTheyRun) {
  REQUIRE_TINY_SD();
  std::vector<std::string> names;
  uint64_t total = 0;
  for (const auto& unit : model_units(*tiny_unet())) {
    names.push_back(unit.name);
    total += unit.bytes;
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{"time_proj", "time_embedding", "conv_in", "down_blocks.0", "down_blocks.1",
                                      "down_blocks.2", "down_blocks.3", "mid_block", "up_blocks.0", "up_blocks.1",
                                      "up_blocks.2", "up_blocks.3", "conv_norm_out", "conv_out"}));
  EXPECT_EQ(total, Checkpoint::open(tiny_sd() / "unet").total_bytes());
  EXPECT_GT(activation_estimate(*tiny_unet()), 0u);
}

TEST(UNet2DConditionModel, InputErrorsNameTheInput) {
  REQUIRE_TINY_SD();
  const UNetCall call = step0(at::kFloat, test::test_device());
  EXPECT_ERROR_CONTAINS(run(tiny_unet(), {call.sample.narrow(1, 0, 3), call.timestep, call.encoder_hidden_states}),
                        "sample must be [batch, 4, height, width]");
  EXPECT_ERROR_CONTAINS(run(tiny_unet(), {call.sample, call.timestep.expand({3}), call.encoder_hidden_states}),
                        "timestep must be a scalar, [1] or [2]");
  EXPECT_ERROR_CONTAINS(run(tiny_unet(), {call.sample, call.timestep, call.encoder_hidden_states.narrow(2, 0, 16)}),
                        "encoder_hidden_states must be [2, tokens, 32]");
  EXPECT_ERROR_CONTAINS(run(tiny_unet(), {call.sample, call.timestep, call.encoder_hidden_states[0]}),
                        "encoder_hidden_states must be");
}

// ---- configs -------------------------------------------------------------------------------------

TEST(UNet2DConditionConfig, ReadsTheTinyConfigAsDiffusersDoes) {
  REQUIRE_TINY_SD();
  const auto config = UNet2DConditionConfig::from_file(tiny_sd() / "unet" / "config.json");
  EXPECT_EQ(config.block_out_channels, (std::vector<int64_t>{16, 32, 32, 32}));
  EXPECT_EQ(config.num_attention_heads, (std::vector<int64_t>{2, 2, 2, 2}));  // attention_head_dim 2 = heads
  EXPECT_EQ(config.cross_attention_dim, (std::vector<int64_t>{32, 32, 32, 32}));
  EXPECT_EQ(config.layers_per_block, (std::vector<int64_t>{2, 2, 2, 2}));
  EXPECT_EQ(config.transformer_layers_per_block, (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(config.norm_num_groups, 8);
  EXPECT_EQ(config.time_embed_dim(), 64);
  EXPECT_EQ(config.sample_size, 8);
  EXPECT_FALSE(config.use_linear_projection);
}

TEST(UNet2DConditionConfig, TheRealSd15AndSd21UNetsBuildWithTheirPublishedSizes) {
  const auto sd15 = UNet2DConditionConfig::from_json(JsonConfig::parse(kSd15Config, "sd15/unet/config.json"));
  EXPECT_EQ(sd15.num_attention_heads, (std::vector<int64_t>{8, 8, 8, 8}));
  EXPECT_EQ(sd15.cross_attention_dim, (std::vector<int64_t>{768, 768, 768, 768}));
  const auto meta = at::TensorOptions().dtype(at::kHalf).device(c10::kMeta);
  UNet2DConditionModel unet15(sd15, meta);
  EXPECT_EQ(parameter_count(*unet15), 859520964);  // SD 1.5's UNet: 859.52M parameters
  const auto units = model_units(*unet15);
  EXPECT_EQ(units.size(), 14u);
  EXPECT_EQ(module_bytes(*unet15), 2u * 859520964u);
  std::cout << "[ sizes ] SD 1.5 UNet in float16: " << format_bytes(module_bytes(*unet15)) << ", activations (512x512, "
            << "batch 2): " << format_bytes(activation_estimate(*unet15)) << "\n";
  // Heads of 40, 80 and 160 channels.
  EXPECT_EQ(unet15->named_parameters()["down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q.weight"].size(0),
            1280);

  const auto sd21 = UNet2DConditionConfig::from_json(JsonConfig::parse(kSd21Config, "sd21/unet/config.json"));
  EXPECT_EQ(sd21.num_attention_heads, (std::vector<int64_t>{5, 10, 20, 20}));
  EXPECT_TRUE(sd21.use_linear_projection);
  EXPECT_TRUE(sd21.upcast_attention);
  UNet2DConditionModel unet21(sd21, meta);
  EXPECT_EQ(parameter_count(*unet21), 865910724);  // SD 2.1's UNet: 865.91M parameters
  EXPECT_EQ(unet21->named_parameters()["down_blocks.0.attentions.0.proj_in.weight"].dim(), 2);  // linear
}

TEST(UNet2DConditionConfig, IntOrListKeysAndTheirErrors) {
  auto parse = [](const std::string& extra) {
    std::string text = kSd15Config;
    text.insert(text.rfind('}'), ", " + extra);
    return UNet2DConditionConfig::from_json(JsonConfig::parse(text, "unet/config.json"));
  };
  // A key given twice: nlohmann keeps the last, so `extra` overrides the SD 1.5 value.
  const auto lists = parse(R"("layers_per_block": [1, 2, 3, 2], "transformer_layers_per_block": [1, 2, 2, 1],
                              "cross_attention_dim": [768, 768, 768, 768])");
  EXPECT_EQ(lists.layers_per_block, (std::vector<int64_t>{1, 2, 3, 2}));
  EXPECT_EQ(lists.transformer_layers_per_block, (std::vector<int64_t>{1, 2, 2, 1}));
  const auto counts = lists.block_counts();
  auto count_of = [&](const std::string& prefix) {
    for (const auto& c : counts)
      if (c.prefix == prefix) return c.count;
    return int64_t{-1};
  };
  EXPECT_EQ(count_of("down_blocks.2.resnets."), 3);
  EXPECT_EQ(count_of("up_blocks.1.resnets."), 4);  // mirrors down block 2, one more resnet
  EXPECT_EQ(count_of("down_blocks.1.attentions.0.transformer_blocks."), 2);
  EXPECT_EQ(count_of("up_blocks.2.attentions.1.transformer_blocks."), 2);  // mirrors down block 1
  EXPECT_EQ(count_of("mid_block.attentions.0.transformer_blocks."), 1);
  EXPECT_EQ(count_of("down_blocks.3.attentions."), -1);  // DownBlock2D has none

  EXPECT_ERROR_CONTAINS(parse(R"("attention_head_dim": [8, 8])"),
                        "unet/config.json: key 'attention_head_dim' has 2 entries for 4 down blocks");
  EXPECT_ERROR_CONTAINS(parse(R"("attention_head_dim": "eight")"),
                        "key 'attention_head_dim' should be an integer or a list of integers, got \"eight\"");
  EXPECT_ERROR_CONTAINS(parse(R"("transformer_layers_per_block": [[1, 2], [2, 2], [10, 10], 1])"),
                        "key 'transformer_layers_per_block' is a list of lists");
  EXPECT_ERROR_CONTAINS(parse(R"("attention_head_dim": 7)"),
                        "key 'attention_head_dim' gives 7 heads, which do not split the 320 channels of down block 0");
  EXPECT_ERROR_CONTAINS(parse(R"("norm_num_groups": 48)"), "key 'block_out_channels' entry 320 does not split");
  EXPECT_ERROR_CONTAINS(parse(R"("layers_per_block": -1)"), "key 'layers_per_block' is -1, outside [1,");
  EXPECT_ERROR_CONTAINS(parse(R"("block_out_channels": [320, 640])"),
                        "key 'down_block_types' has 4 entries but block_out_channels has 2");
  EXPECT_ERROR_CONTAINS(parse(R"("act_fn": "swishy")"), "key 'act_fn' is 'swishy'");
  EXPECT_ERROR_CONTAINS(parse(R"("conv_in_kernel": 4)"), "key 'conv_in_kernel' is 4");
}

TEST(UNet2DConditionConfig, VariantsSdDoesNotUseAreRefusedByName) {
  auto parse = [](const std::string& extra) {
    std::string text = kSd15Config;
    text.insert(text.rfind('}'), ", " + extra);
    return UNet2DConditionConfig::from_json(JsonConfig::parse(text, "unet/config.json"));
  };
  const std::vector<std::pair<std::string, std::string>> refused = {
      {R"("class_embed_type": "timestep")", "key 'class_embed_type' is \"timestep\": a class embedding"},
      {R"("num_class_embeds": 1000)", "key 'num_class_embeds' is 1000"},
      {R"("addition_embed_type": "text_time")", "key 'addition_embed_type' is \"text_time\""},
      {R"("encoder_hid_dim": 1024)", "key 'encoder_hid_dim' is 1024"},
      {R"("encoder_hid_dim_type": "text_proj")", "key 'encoder_hid_dim_type' is \"text_proj\""},
      {R"("time_cond_proj_dim": 256)", "key 'time_cond_proj_dim' is 256"},
      {R"("time_embedding_act_fn": "silu")", "key 'time_embedding_act_fn' is \"silu\""},
      {R"("timestep_post_act": "silu")", "key 'timestep_post_act' is \"silu\""},
      {R"("num_attention_heads": 8)", "key 'num_attention_heads' is 8"},
      {R"("time_embedding_type": "fourier")", "key 'time_embedding_type' is \"fourier\""},
      {R"("attention_type": "gated")", "key 'attention_type' is \"gated\""},
      {R"("resnet_time_scale_shift": "scale_shift")", "key 'resnet_time_scale_shift' is \"scale_shift\""},
      {R"("resnet_skip_time_act": true)", "key 'resnet_skip_time_act' is true"},
      {R"("dual_cross_attention": true)", "key 'dual_cross_attention' is true"},
      {R"("class_embeddings_concat": true)", "key 'class_embeddings_concat' is true"},
      {R"("only_cross_attention": [false, true, false, false])",
       "key 'only_cross_attention' is [false,true,false,false]"},
      {R"("mid_block_type": null)", "key 'mid_block_type' is null"},
      {R"("mid_block_type": "UNetMidBlock2DSimpleCrossAttn")",
       "key 'mid_block_type' is 'UNetMidBlock2DSimpleCrossAttn'"},
      {R"("down_block_types": ["SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"])",
       "key 'down_block_types' has 'SimpleCrossAttnDownBlock2D'"},
      {R"("up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D"])",
       "key 'up_block_types' has 'AttnUpBlock2D'"},
      {R"("_class_name": "UNet2DModel")", "_class_name is 'UNet2DModel'"},
  };
  for (const auto& [extra, message] : refused) EXPECT_ERROR_CONTAINS(parse(extra), message);
  // What diffusers ignores for these block types is accepted; "UNetRes" names are diffusers' aliases.
  const auto accepted = parse(R"("cross_attention_norm": null, "addition_embed_type_num_heads": 64,
      "mid_block_only_cross_attention": null, "only_cross_attention": false, "dropout": 0.1,
      "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "UNetResDownBlock2D"])");
  EXPECT_EQ(accepted.down_block_types.back(), "DownBlock2D");
}

TEST(UNet2DConditionConfig, LoadingRefusesUnsupportedValuesAndWrongBlockCountsByName) {
  REQUIRE_TINY_SD();
  EXPECT_ERROR_CONTAINS(load_unet_2d_condition(unet_folder_with_config(
                            "unet_class_embed", tiny_config_with("class_embed_type", "\"timestep\""))),
                        "config.json: key 'class_embed_type' is \"timestep\"");
  EXPECT_ERROR_CONTAINS(
      load_model<UNet2DConditionModel>(
          unet_folder_with_config("unet_attention_type", tiny_config_with("attention_type", "\"gated\"")),
          {.device_map = "auto"}),
      "key 'attention_type' is \"gated\"");
  // A layer count the weights do not hold is refused before anything is built, naming key and prefix.
  EXPECT_ERROR_CONTAINS(
      load_unet_2d_condition(unet_folder_with_config("unet_layers", tiny_config_with("layers_per_block", "3"))),
      "config.json: layers_per_block is 3 but the weights hold 2 blocks (down_blocks.0.resnets.N)");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_ERROR_CONTAINS(load_unet_2d_condition(unet_folder_with_config(
                            "unet_huge", tiny_config_with("transformer_layers_per_block", "[1, 1, 1000000, 1]"))),
                        "transformer_layers_per_block is 1000000 but the weights hold 1 blocks");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_ERROR_CONTAINS(load_model<UNet2DConditionModel>(
                            unet_folder_with_config("unet_blocks_map", tiny_config_with("layers_per_block", "1")),
                            {.device_map = DeviceMap{{"", "cpu"}}}),
                        "layers_per_block is 1 but the weights hold 2 blocks");
}

// ---- the VAE and CLIP of the SD pipeline ---------------------------------------------------------

TEST(SdVae, DecodesAndEncodesAsDiffusers) {
  REQUIRE_TINY_SD();
  const c10::Device device = test::test_device();
  AutoencoderKL vae = load_autoencoder_kl(tiny_sd() / "vae", at::kFloat, device);
  EXPECT_TRUE(vae->named_parameters().contains("quant_conv.weight"));
  EXPECT_DOUBLE_EQ(vae->config().scaling_factor, 0.18215);
  EXPECT_FALSE(vae->config().shift_factor.has_value());
  at::NoGradGuard no_grad;
  // The pipeline's decoder input is latents / scaling_factor (no shift).
  EXPECT_TENSORS_CLOSE(unscale_latents(reference().load("latents_final"), vae->config()),
                       reference().load("vae_decoder_input"), 1e-6);
  const at::Tensor decoded = vae->decode(reference().load("vae_decoder_input", at::kFloat, device));
  test::print_error("SD VAE decode vs diffusers", decoded, reference().load("vae_decoded"));
  EXPECT_TENSORS_CLOSE(decoded, reference().load("vae_decoded"), 1e-4);
  // The reference encoded its output image mapped back to [-1, 1] (pipeline_output_pt * 2 - 1: the
  // decoded image clamped) and kept latent_dist.mean.
  const at::Tensor image = reference().load("pipeline_output_pt", at::kFloat, device) * 2 - 1;
  const at::Tensor mean = vae->encode_mean(image);
  test::print_error("SD VAE encode mean vs diffusers", mean, reference().load("vae_encoder_latent_dist_mean"));
  EXPECT_TENSORS_CLOSE(mean, reference().load("vae_encoder_latent_dist_mean"), 1e-4);
}

TEST(SdClip, TokenizesAndEncodesThePromptsAsTransformers) {
  REQUIRE_TINY_SD();
  // reference.json holds -Infinity (a scheduler's lambda_min_clipped), which is not JSON; the prompts
  // are read with it made null.
  const std::string text = std::regex_replace(read_text(*test::fixtures_dir() / "tiny-sd" / "reference.json"),
                                              std::regex("-Infinity"), "null");
  const JsonConfig call = JsonConfig::parse(text, "tiny-sd/reference.json");
  const ClipTokenizer tokenizer = ClipTokenizer::from_pretrained(tiny_sd() / "tokenizer");
  const at::Tensor ids = tokenizer.encode_batch(call.get_string_list("prompts", {}));
  const at::Tensor negative_ids = tokenizer.encode_batch(call.get_string_list("negative_prompts", {}));
  EXPECT_TRUE(at::equal(ids, reference().load("clip_input_ids")));
  EXPECT_TRUE(at::equal(negative_ids, reference().load("clip_negative_input_ids")));

  const c10::Device device = test::test_device();
  ClipTextModel clip = load_clip_text_model(tiny_sd() / "text_encoder", at::kFloat, device);
  at::NoGradGuard no_grad;
  const at::Tensor embeds = clip->forward(ids.to(device)).last_hidden_state;
  const at::Tensor negative = clip->forward(negative_ids.to(device)).last_hidden_state;
  test::print_error("SD CLIP prompt_embeds vs transformers", embeds, reference().load("prompt_embeds"));
  test::print_error("SD CLIP negative_prompt_embeds vs transformers", negative,
                    reference().load("negative_prompt_embeds"));
  EXPECT_TENSORS_CLOSE(embeds, reference().load("prompt_embeds"), 1e-4);
  EXPECT_TENSORS_CLOSE(negative, reference().load("negative_prompt_embeds"), 1e-4);
  // The UNet's step-0 text input is [negative; positive].
  EXPECT_TENSORS_CLOSE(at::cat({negative, embeds}), reference().load("unet_encoder_hidden_states_step0"), 1e-4);
}

// ---- the shared blocks ---------------------------------------------------------------------------

TEST(SharedBlocks, SamplersHalveAndDoubleAsDiffusersDoes) {
  at::NoGradGuard no_grad;
  const auto options = at::TensorOptions().dtype(at::kFloat);
  Downsample2D unet_down(Downsample2DOptions{.channels = 4, .use_conv = true, .padding = 1}, options);
  Downsample2D vae_down(Downsample2DOptions{.channels = 4, .use_conv = true, .padding = 0}, options);
  Downsample2D pool(Downsample2DOptions{.channels = 4}, options);
  init_random_parameters(*unet_down, 0);
  init_random_parameters(*vae_down, 0);
  const at::Tensor odd = at::randn({1, 4, 3, 5});
  EXPECT_EQ(unet_down(odd).sizes(), (std::vector<int64_t>{1, 4, 2, 3}));  // rounds up
  EXPECT_EQ(vae_down(odd).sizes(), (std::vector<int64_t>{1, 4, 1, 2}));   // rounds down
  EXPECT_EQ(pool(odd).sizes(), (std::vector<int64_t>{1, 4, 1, 2}));
  EXPECT_TRUE(pool->parameters().empty());

  const at::Tensor x = at::arange(6, at::kFloat).reshape({1, 1, 2, 3});
  EXPECT_TRUE(at::equal(upsample_nearest_2x(x), at::upsample_nearest2d(x, {4, 6})));
  Upsample2D up(Upsample2DOptions{.channels = 1}, options);
  // To a skip's size (3x5 from 2x3): nearest takes floor(i * in / out).
  const at::Tensor sized = up->forward(x, {3, 5});
  EXPECT_TRUE(at::equal(sized[0][0][2], at::tensor({3.f, 3.f, 4.f, 4.f, 5.f})));
  EXPECT_TRUE(at::equal(up->forward(x.to(at::kBFloat16), {3, 5}), sized.to(at::kBFloat16)));
  EXPECT_ERROR_CONTAINS(up->forward(x, {3}), "the output size must be {height, width}");
}

// GroupNorm on channels-last maps (what the UNet keeps on CUDA in half precision; our own kernels
// there): float32 statistics against at::group_norm in float32, the layout kept, SiLU fused with the
// same roundings, and the same bits on every call. On the CPU, at::group_norm on the same maps.
TEST(SharedBlocks, GroupNormOnChannelsLastMapsMatchesFloat32) {
  at::NoGradGuard no_grad;
  const c10::Device device = test::test_device();
  const std::vector<at::ScalarType> dtypes =
      device.is_cuda() ? std::vector<at::ScalarType>{at::kHalf, at::kBFloat16} : std::vector<at::ScalarType>{at::kFloat};
  struct Shape {
    int64_t batch, channels, groups, height, width;
  };
  // SD's widths and groups, odd sizes, a 1x1 map, the widest supported and an odd group width.
  const std::vector<Shape> shapes = {{2, 320, 32, 64, 64}, {2, 48, 8, 3, 5},  {1, 1280, 32, 8, 8},
                                     {1, 2048, 32, 4, 4},  {3, 128, 32, 17, 9}, {2, 12, 2, 1, 1},
                                     {2, 96, 32, 6, 6}};
  at::manual_seed(0);
  for (const at::ScalarType dtype : dtypes) {
    for (const Shape& s : shapes) {
      const auto options = at::TensorOptions().dtype(dtype).device(device);
      GroupNorm norm(s.groups, s.channels, 1e-5, /*affine=*/true, options);
      norm->weight.copy_(at::randn({s.channels}) * 0.5 + 1);
      norm->bias.copy_(at::randn({s.channels}) * 0.1);
      // An offset mean, so that statistics computed as E[x^2] - E[x]^2 in float32 would show.
      const at::Tensor x =
          (at::randn({s.batch, s.channels, s.height, s.width}) * 2 + 3).to(options).contiguous(at::MemoryFormat::ChannelsLast);
      const at::Tensor expected = at::group_norm(x.to(at::kFloat).contiguous(), s.groups, norm->weight.to(at::kFloat),
                                                 norm->bias.to(at::kFloat), 1e-5);
      const double tolerance = dtype == at::kHalf ? 2e-3 : dtype == at::kBFloat16 ? 1e-2 : 1e-5;
      const std::string what = c10::toString(dtype) + std::string(" ") + c10::str(x.sizes()) + " groups " +
                               std::to_string(s.groups);
      const at::Tensor out = norm(x);
      EXPECT_EQ(out.scalar_type(), dtype) << what;
      EXPECT_TENSORS_CLOSE(out.to(at::kFloat), expected, tolerance) << what;
      const at::Tensor activated = norm->forward_then(x, "silu");
      EXPECT_TENSORS_CLOSE(activated.to(at::kFloat), at::silu(out.to(at::kFloat)), tolerance) << what;
      // With a per-(image, channel) bias added first (a resnet's time embedding): as the separate add.
      const at::Tensor time = at::randn({s.batch, s.channels}).to(options);
      const at::Tensor shifted = x + time.unsqueeze(-1).unsqueeze(-1);
      EXPECT_TRUE(at::equal(norm->forward_then(x, "silu", time), norm->forward_then(shifted, "silu"))) << what;
      const bool kernel_width = (s.channels / s.groups) % 2 == 0;  // else at::group_norm (NCHW out)
      if (device.is_cuda() && kernel_width) {
        EXPECT_TRUE(out.is_contiguous(at::MemoryFormat::ChannelsLast)) << what;
        EXPECT_TRUE(activated.is_contiguous(at::MemoryFormat::ChannelsLast)) << what;
        EXPECT_TRUE(at::equal(norm(x), out)) << what << ": not deterministic";
        // The fused SiLU rounds where the two steps do: the same values as silu of the rounded norm.
        EXPECT_TRUE(at::equal(activated, at::silu(out))) << what;
        // Against PyTorch's own kernel in this dtype: at most a rounding apart.
        const at::Tensor own = at::group_norm(x.contiguous(), s.groups, norm->weight, norm->bias, 1e-5);
        EXPECT_TENSORS_CLOSE(out.to(at::kFloat), own.to(at::kFloat), tolerance) << what;
      }
    }
  }
}

// GEGLU's gate (SD's feed-forward): on CUDA in half precision one kernel, with the same values as the
// two separate operations.
TEST(SharedBlocks, GegluGateGivesTheValuesOfTheSeparateSteps) {
  at::NoGradGuard no_grad;
  const c10::Device device = test::test_device();
  for (const at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    if (dtype != at::kFloat && device.is_cpu()) continue;
    for (const int64_t dim : {40, 6}) {  // 8-wide loads and 2-wide ones
      FeedForward ff(dim, dim, 4, at::TensorOptions().dtype(dtype).device(device), "geglu");
      init_random_parameters(*ff, 1);
      const at::Tensor x = at::randn({2, 7, dim}).to(device, dtype);
      const auto halves = ff->proj_in(x).chunk(2, -1);
      const at::Tensor expected = ff->proj_out(halves[0] * at::gelu(halves[1]));
      EXPECT_TRUE(at::equal(ff(x), expected)) << c10::toString(dtype) << " dim " << dim;
    }
  }
}

// The samplers and the attention block keep a channels-last map channels-last with the same values.
TEST(SharedBlocks, ChannelsLastMapsGiveTheSameUNetOutput) {
  REQUIRE_TINY_SD();
  const UNetCall call = step0(at::kFloat, test::test_device());
  const at::Tensor base = run(tiny_unet(), call);
  const at::Tensor out = run(tiny_unet(), {call.sample.contiguous(at::MemoryFormat::ChannelsLast), call.timestep,
                                           call.encoder_hidden_states});
  test::print_error("UNet on a channels-last sample vs NCHW", out, base);
  EXPECT_TENSORS_CLOSE(out, base, 1e-5);
  const at::Tensor x = at::arange(2 * 3 * 2 * 3, at::kFloat).reshape({2, 3, 2, 3});
  const at::Tensor doubled = upsample_nearest_2x(x.contiguous(at::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(doubled.is_contiguous(at::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(at::equal(doubled, upsample_nearest_2x(x)));
}

// On CUDA in float16 the UNet runs channels-last inside (cuDNN's NHWC convolutions, our GroupNorm
// kernels) and hands back an NCHW-contiguous output, close to diffusers' float32 one.
TEST(UNet2DConditionModel, Float16OnCudaStaysCloseAndReturnsNchw) {
  REQUIRE_TINY_SD();
  const c10::Device device = test::test_device();
  if (!device.is_cuda()) GTEST_SKIP() << "float16 UNet: CUDA only (DIFFUSE_TEST_DEVICE=cuda)";
  UNet2DConditionModel unet = load_unet_2d_condition(tiny_sd() / "unet", at::kHalf, device);
  const at::Tensor out = run(unet, step0(at::kHalf, device));
  EXPECT_EQ(out.scalar_type(), at::kHalf);
  EXPECT_TRUE(out.is_contiguous());
  test::print_error("UNet in float16 (channels-last inside) vs diffusers float32", out, reference().load("unet_out_step0"));
  EXPECT_TENSORS_CLOSE(out.to(at::kCPU, at::kFloat), reference().load("unet_out_step0"), 1e-2);
  EXPECT_TRUE(unet->conv_in->weight.is_contiguous(at::MemoryFormat::ChannelsLast));
}

TEST(SharedBlocks, ResnetTimeEmbeddingIsOptionalAndChecked) {
  at::NoGradGuard no_grad;
  const auto options = at::TensorOptions().dtype(at::kFloat);
  ResnetBlock2D plain(ResnetBlock2DOptions{.in_channels = 8, .out_channels = 16, .groups = 4}, options);
  ResnetBlock2D timed(
      ResnetBlock2DOptions{
          .in_channels = 8, .out_channels = 8, .temb_channels = 12, .groups = 4, .output_scale_factor = 2},
      options);
  init_random_parameters(*plain, 0);
  init_random_parameters(*timed, 0);
  EXPECT_TRUE(plain->named_parameters().contains("conv_shortcut.weight"));
  EXPECT_FALSE(plain->named_parameters().contains("time_emb_proj.weight"));
  EXPECT_FALSE(timed->named_parameters().contains("conv_shortcut.weight"));
  const at::Tensor x = at::randn({2, 8, 4, 4}), temb = at::randn({2, 12});
  EXPECT_EQ(plain(x).sizes(), (std::vector<int64_t>{2, 16, 4, 4}));
  EXPECT_EQ(timed(x, temb).sizes(), x.sizes());
  EXPECT_ERROR_CONTAINS(plain(x, temb), "a time embedding was given to a block without one");
  EXPECT_ERROR_CONTAINS(timed(x), "this block needs a time embedding");
  EXPECT_ERROR_CONTAINS(
      ResnetBlock2D(ResnetBlock2DOptions{.in_channels = 8, .time_embedding_norm = "scale_shift"}, options),
      "time_embedding_norm 'scale_shift' is not supported");
}
