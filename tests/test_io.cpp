// Config files, images and folder inspection.

#include <fstream>

#include "diffuse/error.hpp"
#include "diffuse/io/configs.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"
#include "diffuse/io/image.hpp"
#include "diffuse/io/inspect.hpp"
#include "diffuse/io/safetensors.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

fs::path write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

}  // namespace

TEST(Configs, ReadsTheTinyFluxPipelineConfigs) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path pipeline = test::tiny_flux_pipeline();
  const ModelIndex index = ModelIndex::from_file(pipeline / "model_index.json");
  EXPECT_EQ(index.class_name, "FluxPipeline");
  EXPECT_EQ(index.components.size(), 7u);  // feature_extractor and image_encoder are [null, null]
  EXPECT_EQ(index.components.at("transformer").class_name, "FluxTransformer2DModel");
  EXPECT_EQ(index.components.at("tokenizer_2").library, "transformers");

  const auto transformer = FluxTransformerConfig::from_file(pipeline / "transformer" / "config.json");
  EXPECT_EQ(transformer.in_channels, 16);
  EXPECT_EQ(transformer.out_channels, 16);  // null in the file -> in_channels
  EXPECT_EQ(transformer.num_layers, 2);
  EXPECT_EQ(transformer.num_single_layers, 2);
  EXPECT_EQ(transformer.inner_dim(), 64);
  EXPECT_TRUE(transformer.guidance_embeds);
  EXPECT_EQ(transformer.axes_dims_rope, (std::vector<int64_t>{4, 6, 6}));

  const auto clip = ClipTextConfig::from_file(pipeline / "text_encoder" / "config.json");
  EXPECT_EQ(clip.hidden_size, 32);
  EXPECT_EQ(clip.intermediate_size, 37);
  EXPECT_EQ(clip.hidden_act, "quick_gelu");
  EXPECT_EQ(clip.eos_token_id, 49407);

  const auto t5 = T5Config::from_file(pipeline / "text_encoder_2" / "config.json");
  EXPECT_EQ(t5.d_model, 32);
  EXPECT_TRUE(t5.is_gated_act);
  EXPECT_EQ(t5.dense_act_fn, "gelu_new");
  EXPECT_EQ(t5.vocab_size, 1100);

  const auto vae = AutoencoderKLConfig::from_file(pipeline / "vae" / "config.json");
  EXPECT_EQ(vae.block_out_channels, (std::vector<int64_t>{8, 16, 16, 16}));
  EXPECT_EQ(vae.vae_scale_factor(), 8);
  EXPECT_DOUBLE_EQ(vae.scaling_factor, 0.3611);
  ASSERT_TRUE(vae.shift_factor.has_value());
  EXPECT_DOUBLE_EQ(*vae.shift_factor, 0.1159);
  EXPECT_FALSE(vae.use_quant_conv);

  const auto scheduler =
      FlowMatchEulerDiscreteSchedulerConfig::from_file(pipeline / "scheduler" / "scheduler_config.json");
  EXPECT_TRUE(scheduler.use_dynamic_shifting);
  EXPECT_DOUBLE_EQ(scheduler.max_shift, 1.15);
  EXPECT_EQ(scheduler.max_image_seq_len, 4096);
  EXPECT_FALSE(scheduler.shift_terminal.has_value());
}

TEST(Configs, AbsentKeysTakeDiffusersDefaultsAndUnknownKeysAreIgnored) {
  const auto config = FluxTransformerConfig::from_json(JsonConfig::parse(R"({"some_future_key": [1, 2]})", "mem"));
  EXPECT_EQ(config.num_layers, 19);
  EXPECT_EQ(config.num_single_layers, 38);
  EXPECT_EQ(config.in_channels, 64);
  EXPECT_EQ(config.joint_attention_dim, 4096);
  const auto t5 = T5Config::from_json(JsonConfig::parse("{}", "mem"));
  EXPECT_FALSE(t5.is_gated_act);
  EXPECT_EQ(t5.dense_act_fn, "relu");
}

TEST(Configs, AKeyOfTheWrongTypeNamesTheKeyAndTheFile) {
  const fs::path dir = test::temporary_folder("configs_wrong_type");
  const auto file = write_text(dir / "config.json", R"({"num_layers": "nineteen"})");
  const std::string message = test::error_of([&] { FluxTransformerConfig::from_file(file); });
  EXPECT_NE(message.find("num_layers"), std::string::npos) << message;
  EXPECT_NE(message.find("config.json"), std::string::npos) << message;
  EXPECT_NE(message.find("integer"), std::string::npos) << message;

  const auto list = write_text(dir / "vae.json", R"({"block_out_channels": [8, "16"]})");
  EXPECT_NE(test::error_of([&] { AutoencoderKLConfig::from_file(list); }).find("block_out_channels"), std::string::npos);
  const auto flag = write_text(dir / "flag.json", R"({"guidance_embeds": 1})");
  EXPECT_NE(test::error_of([&] { FluxTransformerConfig::from_file(flag); }).find("guidance_embeds"), std::string::npos);
}

TEST(Configs, BrokenFilesGiveErrors) {
  const fs::path dir = test::temporary_folder("configs_broken");
  EXPECT_NE(test::error_of([&] { JsonConfig::load(dir / "absent.json"); }).find("absent.json"), std::string::npos);
  const auto bad = write_text(dir / "bad.json", "{ not json");
  EXPECT_NE(test::error_of([&] { JsonConfig::load(bad); }).find("not valid JSON"), std::string::npos);
  const auto index = write_text(dir / "model_index.json", R"({"_class_name": "FluxPipeline", "vae": "AutoencoderKL"})");
  EXPECT_NE(test::error_of([&] { ModelIndex::from_file(index); }).find("'vae'"), std::string::npos);
  const auto rope = write_text(dir / "rope.json", R"({"attention_head_dim": 16, "axes_dims_rope": [4, 4, 4]})");
  EXPECT_NE(test::error_of([&] { FluxTransformerConfig::from_file(rope); }).find("axes_dims_rope"), std::string::npos);
}

TEST(Image, PngRoundTripsPixelsExactly) {
  const fs::path dir = test::temporary_folder("image_png");
  Image image{.width = 7, .height = 5};
  for (int i = 0; i < 7 * 5 * 3; ++i) image.pixels.push_back(static_cast<uint8_t>(i * 37));
  image.save_png(dir / "a.png");
  const Image back = Image::load_png(dir / "a.png");
  EXPECT_EQ(back.width, 7);
  EXPECT_EQ(back.height, 5);
  EXPECT_EQ(back.pixels, image.pixels);
}

TEST(Image, FromTensorRoundsAsDiffusers) {
  at::Tensor chw = at::tensor({0.0f, 0.5f, 1.0f, 1.5f, -0.2f, 0.0025f}).reshape({3, 1, 2});
  const Image image = Image::from_tensor(chw);
  // (x * 255).round(), clamped; HWC order.
  EXPECT_EQ(image.pixels, (std::vector<uint8_t>{0, 255, 0, 128, 255, 1}));
}

TEST(Image, UnwritablePathLeavesNoFile) {
  const fs::path dir = test::temporary_folder("image_unwritable");
  Image image{.width = 1, .height = 1, .pixels = {1, 2, 3}};
  EXPECT_THROW(image.save_png(dir / "no_such_folder" / "x.png"), Error);
  EXPECT_THROW((Image{.width = 2, .height = 2}.save_png(dir / "x.png")), Error);
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(Image, ReadsTheReferencePng) {
  DIFFUSE_REQUIRE_FIXTURES();
  const Image image = Image::load_png(*test::fixtures_dir() / "tiny-flux" / "image_0.png");
  at::Tensor expected = test::tiny_flux_reference().load("image_uint8")[0];
  ASSERT_EQ(image.height, 64);
  ASSERT_EQ(image.width, 96);
  at::Tensor actual = at::from_blob(const_cast<uint8_t*>(image.pixels.data()), {64, 96, 3}, at::kByte);
  EXPECT_TRUE(at::equal(actual, expected));
}

TEST(Inspect, SummarizesThePipelineFromHeadersAlone) {
  DIFFUSE_REQUIRE_FIXTURES();
  const FolderSummary summary = inspect_folder(test::tiny_flux_pipeline());
  EXPECT_TRUE(summary.is_pipeline);
  EXPECT_EQ(summary.class_name, "FluxPipeline");
  const ComponentSummary* transformer = nullptr;
  for (const auto& c : summary.components)
    if (c.name == "transformer") transformer = &c;
  ASSERT_NE(transformer, nullptr);
  EXPECT_EQ(transformer->class_name, "FluxTransformer2DModel");
  EXPECT_EQ(transformer->bytes, transformer->bytes_by_dtype.at("F32"));
  EXPECT_EQ(transformer->bytes, static_cast<uint64_t>(transformer->parameters) * 4);
  EXPECT_EQ(transformer->tensors, 112);
  EXPECT_NE(summary.to_json().find("\"FluxTransformer2DModel\""), std::string::npos);
  EXPECT_NE(summary.to_text().find("transformer"), std::string::npos);

  const FolderSummary model = inspect_folder(test::tiny_flux_pipeline() / "text_encoder");
  EXPECT_FALSE(model.is_pipeline);
  EXPECT_EQ(model.class_name, "CLIPTextModel");
  EXPECT_THROW(inspect_folder(test::tiny_flux_pipeline() / "no_such"), Error);
}
