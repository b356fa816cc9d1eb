// AutoencoderKLQwenImage against diffusers on the tiny Qwen-Image VAE: decode and encode of one frame in
// float32 (1e-4), decode in bfloat16 (loose), the pipeline's latent normalization, the checkpoint's names,
// placement (units, a device map with disk units, the activation estimate), configs, and the errors a
// caller can hit.

#include <cstdio>
#include <fstream>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/models/autoencoder_kl_qwenimage.hpp"
#include "diffuse/models/weights.hpp"
#include "diffuse/placement/load_model.hpp"
#include "diffuse/placement/model_units.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

#define REQUIRE_TINY_QWENIMAGE()                                                                                     \
  do {                                                                                                               \
    DIFFUSE_REQUIRE_FIXTURES();                                                                                      \
    if (!fs::exists(*test::fixtures_dir() / "tiny-qwenimage" / "reference.safetensors"))                             \
      GTEST_SKIP() << "tiny-qwenimage is not in the fixtures at " << test::fixtures_dir()->string() << "; skipping"; \
  } while (0)

namespace {

fs::path tiny_qwenimage() { return *test::fixtures_dir() / "tiny-qwenimage"; }
fs::path vae_folder() { return tiny_qwenimage() / "pipeline" / "vae"; }

const SafetensorsFile& reference() {
  static const SafetensorsFile file(tiny_qwenimage() / "reference.safetensors");
  return file;
}

// The tiny VAE in float32 on the test device (TF32 is off there: test_device()).
AutoencoderKLQwenImage& tiny_vae() {
  static AutoencoderKLQwenImage vae =
      load_model<AutoencoderKLQwenImage>(vae_folder(), {.device = test::test_device().str()});
  return vae;
}

// diffusers' QwenImagePipeline._unpack_latents: packed [B, (h/2)*(w/2), 4C] -> [B, C, 1, h, w], with
// h and w the latent sizes of reference.json's height and width.
at::Tensor unpack_latents(const at::Tensor& packed, int64_t height, int64_t width, int64_t vae_scale_factor) {
  const int64_t h = 2 * (height / (vae_scale_factor * 2)), w = 2 * (width / (vae_scale_factor * 2));
  const int64_t b = packed.size(0), c = packed.size(2) / 4;
  return packed.view({b, h / 2, w / 2, c, 2, 2}).permute({0, 3, 1, 4, 2, 5}).reshape({b, c, 1, h, w});
}

// A small config in the published layout's style, with an attention block on the encoder's first level
// and three levels (temporal resampling on the deeper one).
AutoencoderKLQwenImageConfig small_config() {
  AutoencoderKLQwenImageConfig config;
  config.base_dim = 4;
  config.z_dim = 2;
  config.dim_mult = {1, 2, 2};
  config.num_res_blocks = 1;
  config.attn_scales = {1.0};
  config.temperal_downsample = {true, false};
  config.latents_mean = {0.5, -0.25};
  config.latents_std = {2.0, 0.5};
  return config;
}

bool has_parameter(torch::nn::Module& module, const std::string& name) {
  return module.named_parameters().find(name) != nullptr;
}

}  // namespace

TEST(AutoencoderKLQwenImage, DecodeMatchesDiffusers) {
  REQUIRE_TINY_QWENIMAGE();
  at::NoGradGuard no_grad;
  const at::Tensor latents = reference().load("vae_decoder_input", at::kFloat, test::test_device());
  ASSERT_EQ(latents.dim(), 5);
  const at::Tensor decoded = tiny_vae()->decode(latents);
  EXPECT_EQ(decoded.device(), test::test_device());
  const at::Tensor expected = reference().load("vae_decoded");  // frame 0, as the pipeline takes it
  ASSERT_EQ(decoded.sizes(), (std::vector<int64_t>{expected.size(0), 3, 1, expected.size(2), expected.size(3)}));
  EXPECT_TENSORS_CLOSE(decoded.select(2, 0), expected, 1e-4);
  test::print_error("decode(vae_decoder_input) vs vae_decoded", decoded.select(2, 0), expected);
  // Clamped to [-1, 1] as diffusers' _decode does.
  EXPECT_LE(decoded.max().item<float>(), 1.0f);
  EXPECT_GE(decoded.min().item<float>(), -1.0f);
}

TEST(AutoencoderKLQwenImage, EncodeMatchesDiffusers) {
  REQUIRE_TINY_QWENIMAGE();
  at::NoGradGuard no_grad;
  // The fixture encoded the decoded image (vae_decoded, frame axis restored), as tiny-flux's does.
  const at::Tensor images = reference().load("vae_decoded", at::kFloat, test::test_device()).unsqueeze(2);
  const at::Tensor mean = tiny_vae()->encode(images);
  const at::Tensor expected = reference().load("vae_encoder_latent_dist_mean");
  EXPECT_TENSORS_CLOSE(mean, expected, 1e-4);
  test::print_error("encode(vae_decoded) vs latent_dist.mean", mean, expected);

  auto [same_mean, logvar] = tiny_vae()->encode_moments(images);
  EXPECT_TRUE(same_mean.equal(mean));
  EXPECT_EQ(logvar.sizes(), mean.sizes());
  EXPECT_LE(logvar.max().item<float>(), 20.0f);
  EXPECT_GE(logvar.min().item<float>(), -30.0f);
}

TEST(AutoencoderKLQwenImage, LatentNormalizationIsThePipelines) {
  REQUIRE_TINY_QWENIMAGE();
  const auto& config = tiny_vae()->config();
  const JsonConfig args = JsonConfig::load(tiny_qwenimage() / "reference.json");
  const at::Tensor unpacked = unpack_latents(reference().load("latents_final"), args.get_int("height", 0),
                                             args.get_int("width", 0), config.vae_scale_factor());
  const at::Tensor decoder_input = unscale_latents(unpacked, config);
  const at::Tensor expected = reference().load("vae_decoder_input");
  EXPECT_TENSORS_CLOSE(decoder_input, expected, 1e-6);
  test::print_error("unscale_latents(unpacked latents_final) vs vae_decoder_input", decoder_input, expected);
  EXPECT_TENSORS_CLOSE(scale_latents(decoder_input, config), unpacked, 1e-6);

  // Any rank from 2 up, in the latents' dtype; a wrong channel count names z_dim.
  EXPECT_EQ(unscale_latents(at::zeros({2, config.z_dim}), config).sizes(), (std::vector<int64_t>{2, config.z_dim}));
  EXPECT_EQ(unscale_latents(unpacked.to(at::kBFloat16), config).scalar_type(), at::kBFloat16);
  EXPECT_ERROR_CONTAINS(unscale_latents(at::zeros({1, config.z_dim + 1, 1, 2, 2}), config), "z_dim");
  EXPECT_ERROR_CONTAINS(scale_latents(at::zeros({4}), config), "z_dim");
}

TEST(AutoencoderKLQwenImage, DecodeInBFloat16StaysClose) {
  REQUIRE_TINY_QWENIMAGE();
  at::NoGradGuard no_grad;
  AutoencoderKLQwenImage vae =
      load_model<AutoencoderKLQwenImage>(vae_folder(), {.dtype = at::kBFloat16, .device = test::test_device().str()});
  for (const auto& p : vae->parameters()) ASSERT_EQ(p.scalar_type(), at::kBFloat16);
  const at::Tensor decoded = vae->decode(reference().load("vae_decoder_input", at::kBFloat16, test::test_device()));
  EXPECT_EQ(decoded.scalar_type(), at::kBFloat16);
  // Rounding the weights alone moves the image by 1.4e-2 (of max |b|); bfloat16 activations through the
  // decoder's 20 convolutions make it 4.2e-2 on the CPU. The bound leaves room for other kernels.
  EXPECT_TENSORS_CLOSE(decoded.select(2, 0), reference().load("vae_decoded"), 8e-2);
  test::print_error("bf16 decode vs float32 vae_decoded", decoded.select(2, 0), reference().load("vae_decoded"));
  const at::Tensor mean = vae->encode(reference().load("vae_decoded", at::kBFloat16, test::test_device()).unsqueeze(2));
  EXPECT_TENSORS_CLOSE(mean, reference().load("vae_encoder_latent_dist_mean"), 5e-2);
  test::print_error("bf16 encode vs float32 latent_dist.mean", mean, reference().load("vae_encoder_latent_dist_mean"));
}

TEST(AutoencoderKLQwenImage, HasExactlyTheCheckpointNames) {
  REQUIRE_TINY_QWENIMAGE();
  const Checkpoint checkpoint = Checkpoint::open(vae_folder());
  AutoencoderKLQwenImage vae(tiny_vae()->config(), at::kFloat);
  const auto params = vae->named_parameters();
  EXPECT_EQ(params.size(), checkpoint.tensors().size());
  for (const auto& info : checkpoint.tensors()) {
    ASSERT_NE(params.find(info.name), nullptr) << info.name;
    EXPECT_EQ(params[info.name].sizes(), c10::IntArrayRef(info.shape)) << info.name;
  }
}

TEST(AutoencoderKLQwenImage, ConfigIsTheFolders) {
  REQUIRE_TINY_QWENIMAGE();
  const auto config = AutoencoderKLQwenImageConfig::from_file(vae_folder() / "config.json");
  EXPECT_EQ(config.base_dim, 8);
  EXPECT_EQ(config.z_dim, 4);
  EXPECT_EQ(config.dim_mult, (std::vector<int64_t>{1, 2, 4}));
  EXPECT_EQ(config.num_res_blocks, 1);
  EXPECT_TRUE(config.attn_scales.empty());
  EXPECT_EQ(config.temperal_downsample, (std::vector<bool>{false, true}));
  EXPECT_EQ(config.spatial_compression_ratio(), 4);
  EXPECT_EQ(config.latents_mean, (std::vector<double>{-0.0974, -0.1208, -0.1116, 0.1335}));
  EXPECT_EQ(config.latents_std, (std::vector<double>{1.0166, 1.4971, 1.3032, 1.2823}));

  // Absent keys are diffusers' defaults, the published VAE's.
  const auto defaults = AutoencoderKLQwenImageConfig::from_json(JsonConfig::parse("{}", "empty"));
  EXPECT_EQ(defaults.z_dim, 16);
  EXPECT_EQ(defaults.vae_scale_factor(), 8);
  EXPECT_EQ(defaults.latents_mean.size(), 16u);
  EXPECT_DOUBLE_EQ(defaults.latents_std.back(), 1.9160);
}

TEST(AutoencoderKLQwenImage, BadConfigsNameTheKey) {
  auto parse = [](const std::string& text) {
    return AutoencoderKLQwenImageConfig::from_json(JsonConfig::parse(text, "vae/config.json"));
  };
  EXPECT_ERROR_CONTAINS(parse(R"({"_class_name": "AutoencoderKLWan"})"), "AutoencoderKLWan");
  EXPECT_ERROR_CONTAINS(parse(R"({"dim_mult": [1, 2], "temperal_downsample": [true, true]})"), "temperal_downsample");
  EXPECT_ERROR_CONTAINS(parse(R"({"temperal_downsample": [1, 0, 0]})"), "temperal_downsample");
  EXPECT_ERROR_CONTAINS(parse(R"({"z_dim": 4})"), "latents_mean");  // 16 default means for 4 channels
  EXPECT_ERROR_CONTAINS(parse(R"({"z_dim": 1, "latents_mean": [0], "latents_std": [0]})"), "latents_std");
  EXPECT_ERROR_CONTAINS(parse(R"({"base_dim": 0})"), "base_dim");
  EXPECT_ERROR_CONTAINS(parse(R"({"num_res_blocks": 1000000})"), "num_res_blocks");
  EXPECT_ERROR_CONTAINS(parse(R"({"dim_mult": []})"), "dim_mult");
  EXPECT_ERROR_CONTAINS(parse(R"({"attn_scales": [-1]})"), "attn_scales");
  EXPECT_ERROR_CONTAINS(parse(R"({"latents_std": "wide"})"), "latents_std");
  AutoencoderKLQwenImageConfig built = small_config();
  built.latents_std.pop_back();
  EXPECT_ERROR_CONTAINS((AutoencoderKLQwenImage(built, at::kFloat)), "latents_std");
}

TEST(AutoencoderKLQwenImage, BadInputIsRefused) {
  REQUIRE_TINY_QWENIMAGE();
  auto& vae = tiny_vae();
  const auto options = at::TensorOptions().device(test::test_device());
  EXPECT_ERROR_CONTAINS(vae->decode(at::zeros({1, 3, 1, 4, 4}, options)), "4 channels");  // z_dim is 4
  EXPECT_ERROR_CONTAINS(vae->decode(at::zeros({1, 4, 4, 4}, options)), "4-D");            // no frame axis
  EXPECT_ERROR_CONTAINS(vae->decode(at::zeros({1, 4, 2, 4, 4}, options)), "2 frames");
  EXPECT_ERROR_CONTAINS(vae->decode(at::zeros({1, 4, 1, 0, 4}, options)), "empty");
  EXPECT_ERROR_CONTAINS(vae->decode(at::zeros({1, 4, 1, 4, 4}, options.dtype(at::kDouble))), "Double");
  EXPECT_ERROR_CONTAINS(vae->decode(at::Tensor()), "undefined");
  EXPECT_ERROR_CONTAINS(vae->encode(at::zeros({1, 4, 1, 16, 16}, options)), "3 channels");
  EXPECT_ERROR_CONTAINS(vae->encode(at::zeros({1, 3, 16, 16}, options)), "4-D");
  EXPECT_ERROR_CONTAINS(vae->encode(at::zeros({1, 3, 5, 16, 16}, options)), "5 frames");
  EXPECT_ERROR_CONTAINS(vae->encode(at::zeros({1, 3, 1, 3, 16}, options)), "too small");
}

TEST(AutoencoderKLQwenImage, AttentionBackendIsSettable) {
  REQUIRE_TINY_QWENIMAGE();
  at::NoGradGuard no_grad;
  AutoencoderKLQwenImage vae = load_model<AutoencoderKLQwenImage>(vae_folder(), {.device = test::test_device().str()});
  const at::Tensor latents = reference().load("vae_decoder_input", at::kFloat, test::test_device());
  vae->set_attention_backend(AttentionBackend::math);
  EXPECT_EQ(vae->attention_backend(), AttentionBackend::math);
  EXPECT_TENSORS_CLOSE(vae->decode(latents).select(2, 0), reference().load("vae_decoded"), 1e-4);
  // Flash needs CUDA and half precision: a float32 model names the backend and why.
  vae->set_attention_backend(AttentionBackend::flash);
  EXPECT_ERROR_CONTAINS(vae->decode(latents), "flash");
}

TEST(AutoencoderKLQwenImage, LayoutFollowsTheConfigAndOddSizesRoundDown) {
  at::NoGradGuard no_grad;
  AutoencoderKLQwenImage vae(small_config(), at::kFloat);
  init_random_parameters(*vae, 0);
  // Level 0: resnet, attention (attn_scales has 1), downsample3d; level 1: resnet (4 -> 8), downsample2d;
  // level 2: resnet. The decoder's first level upsamples in 2d, the second in 3d (reversed).
  for (const char* name :
       {"encoder.down_blocks.0.conv1.weight", "encoder.down_blocks.1.to_qkv.weight", "encoder.down_blocks.1.norm.gamma",
        "encoder.down_blocks.2.time_conv.weight", "encoder.down_blocks.4.resample.1.weight",
        "encoder.down_blocks.3.conv_shortcut.weight", "decoder.up_blocks.0.upsamplers.0.resample.1.weight",
        "decoder.up_blocks.1.upsamplers.0.time_conv.weight", "decoder.up_blocks.2.resnets.1.conv2.weight"})
    EXPECT_TRUE(has_parameter(*vae, name)) << name;
  EXPECT_FALSE(has_parameter(*vae, "encoder.down_blocks.4.time_conv.weight"));
  EXPECT_FALSE(has_parameter(*vae, "decoder.up_blocks.0.upsamplers.0.time_conv.weight"));
  EXPECT_FALSE(has_parameter(*vae, "decoder.up_blocks.2.upsamplers.0.resample.1.weight"));

  // ZeroPad2d((0, 1, 0, 1)) then a stride-2 conv: 17 -> 8 -> 4, 10 -> 5 -> 2 (diffusers rounds down too).
  const at::Tensor images = at::rand({2, 3, 1, 17, 10}) * 2 - 1;
  auto [mean, logvar] = vae->encode_moments(images);
  EXPECT_EQ(mean.sizes(), (std::vector<int64_t>{2, 2, 1, 4, 2}));
  const at::Tensor decoded = vae->decode(mean);
  EXPECT_EQ(decoded.sizes(), (std::vector<int64_t>{2, 3, 1, 16, 8}));
  EXPECT_TRUE(at::isfinite(decoded).all().item<bool>());
  // Each image of a batch is computed alone.
  EXPECT_TRUE(at::allclose(vae->decode(mean.narrow(0, 1, 1)), decoded.narrow(0, 1, 1), 1e-5, 1e-6));
}

TEST(AutoencoderKLQwenImage, CausalConvolutionOfOneFrameIsTheFirstFrameOfMany) {
  // The one-frame path (a 2D conv with the kernel's last time tap) against the padded 3D conv: frame 0
  // of a causal convolution depends on frame 0 alone.
  at::NoGradGuard no_grad;
  qwenimage_vae::CausalConv3d conv(3, 5, 3, 1, at::kFloat);
  init_random_parameters(*conv, 1);
  conv->bias.normal_();
  const at::Tensor video = at::randn({2, 3, 4, 6, 7});
  const at::Tensor all = conv(video);
  EXPECT_EQ(all.sizes(), (std::vector<int64_t>{2, 5, 4, 6, 7}));
  EXPECT_TRUE(at::allclose(conv(video.narrow(2, 0, 1)), all.narrow(2, 0, 1), 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(conv(video.narrow(2, 0, 2)), all.narrow(2, 0, 2), 1e-5, 1e-6));
}

TEST(AutoencoderKLQwenImage, AttentionInSlicesIsTheWholeMatrix) {
  // On the math path the queries run in slices of at most max_scores_per_slice scores: two frames of
  // 7 x 11 = 77 positions, against their own 77 keys, in slices of 1000 / 154 = 6 queries. The
  // reference is diffusers' QwenImageAttentionBlock written out, on the whole score matrix.
  at::NoGradGuard no_grad;
  qwenimage_vae::AttentionBlock block(4, at::kFloat);
  init_random_parameters(*block, 2);
  auto p = block->named_parameters();
  p["norm.gamma"].uniform_(0.5, 1.5);
  p["to_qkv.bias"].normal_();
  p["to_qkv.weight"].normal_();
  const at::Tensor x = at::randn({2, 4, 1, 7, 11});
  block->max_scores_per_slice = 1000;
  const at::Tensor out = block(x);

  const at::Tensor frame = x.select(2, 0);
  const at::Tensor normed = frame / frame.norm(2, {1}, true).clamp_min(1e-12) * 2.0 * p["norm.gamma"];
  const at::Tensor qkv = at::conv2d(normed, p["to_qkv.weight"], p["to_qkv.bias"]).reshape({2, 12, 77}).transpose(1, 2);
  const auto parts = qkv.chunk(3, -1);
  const at::Tensor attended = at::softmax(at::matmul(parts[0], parts[1].transpose(1, 2)) / 2.0, -1).matmul(parts[2]);
  const at::Tensor expected =
      at::conv2d(attended.transpose(1, 2).reshape({2, 4, 7, 11}), p["proj.weight"], p["proj.bias"]) + frame;
  EXPECT_TENSORS_CLOSE(out.select(2, 0), expected, 1e-5);
  test::print_error("sliced attention block vs the whole matrix", out.select(2, 0), expected);
  block->max_scores_per_slice = int64_t{1} << 26;  // one slice
  EXPECT_TENSORS_CLOSE(block(x), out, 1e-6);
}

TEST(AutoencoderKLQwenImage, UnitsRunInOrderAndADeviceMapGivesTheSameImage) {
  REQUIRE_TINY_QWENIMAGE();
  std::vector<std::string> names;
  for (const auto& unit : model_units(*tiny_vae())) names.push_back(unit.name);
  EXPECT_EQ(names, (std::vector<std::string>{"encoder.conv_in", "encoder.down_blocks.0", "encoder.down_blocks.1",
                                             "encoder.down_blocks.2", "encoder.down_blocks.3", "encoder.down_blocks.4",
                                             "encoder.mid_block", "encoder.norm_out", "encoder.conv_out", "quant_conv",
                                             "post_quant_conv", "decoder.conv_in", "decoder.mid_block",
                                             "decoder.up_blocks.0", "decoder.up_blocks.1", "decoder.up_blocks.2",
                                             "decoder.norm_out", "decoder.conv_out"}));

  at::NoGradGuard no_grad;
  AutoencoderKLQwenImage mapped =
      load_model<AutoencoderKLQwenImage>(vae_folder(), {.device_map = DeviceMap{{"", "cpu"},
                                                                                {"decoder.mid_block", "disk"},
                                                                                {"decoder.up_blocks.1", "disk"},
                                                                                {"encoder.down_blocks.3", "disk"}}});
  EXPECT_EQ(mapped->device_map().at("decoder.up_blocks.1"), "disk");
  const at::Tensor decoded = mapped->decode(reference().load("vae_decoder_input"));
  EXPECT_TENSORS_CLOSE(decoded.select(2, 0), reference().load("vae_decoded"), 1e-4);
  test::print_error("decode under a cpu/disk device map vs vae_decoded", decoded.select(2, 0),
                    reference().load("vae_decoded"));
  const at::Tensor mean = mapped->encode(reference().load("vae_decoded").unsqueeze(2));
  EXPECT_TENSORS_CLOSE(mean, reference().load("vae_encoder_latent_dist_mean"), 1e-4);
}

TEST(AutoencoderKLQwenImage, ActivationEstimateCoversA1328Decode) {
  // The published VAE (diffusers' defaults) in bfloat16: a full-resolution residual block of 96 channels
  // holds 4 maps of 96 x 1328 x 1328 (1.35 GB); the estimate adds a quarter for workspaces.
  const AutoencoderKLQwenImageConfig published =
      AutoencoderKLQwenImageConfig::from_json(JsonConfig::parse("{}", "default"));
  AutoencoderKLQwenImage vae(published, at::kBFloat16);
  const uint64_t estimate = activation_estimate(*vae);
  std::printf("[ measured ] activation estimate, published VAE, bf16, 1328x1328: %.2f GB\n", estimate / 1e9);
  const uint64_t full_map = uint64_t{96} * 1328 * 1328 * 2;
  EXPECT_GE(estimate, 4 * full_map);
  EXPECT_LE(estimate, 6 * full_map);
  AutoencoderKLQwenImage vae32(published, at::kFloat);
  EXPECT_NEAR(static_cast<double>(activation_estimate(*vae32)) / static_cast<double>(estimate), 2.0, 1e-6);
}
