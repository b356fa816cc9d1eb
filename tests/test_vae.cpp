// AutoencoderKL against diffusers on the tiny FLUX VAE: decode and encode in float32 (1e-4), decode
// in bfloat16 (loose), the latent scaling helpers, configs with and without quant convs and
// mid-block attention, and the errors a caller can hit.

#include <cstdio>
#include <fstream>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/weights.hpp"
#include "support/test_support.hpp"

using namespace diffuse;

namespace {

// The tiny VAE in float32 on the test device. On CUDA, cuDNN would run float32 convolutions in TF32
// (PyTorch's default) and miss 1e-4; the reference is IEEE float32, so TF32 is off for these tests.
AutoencoderKL& tiny_vae() {
  static AutoencoderKL vae = [] {
    if (test::test_device().is_cuda()) at::globalContext().setAllowTF32CuDNN(false);
    return load_autoencoder_kl(test::tiny_flux_pipeline() / "vae", at::kFloat, test::test_device());
  }();
  return vae;
}

double report(const char* what, const at::Tensor& actual, const at::Tensor& expected) {
  const double error = test::relative_error(actual, expected);
  std::printf("[ measured ] %s: max|a-b|/max|b| = %.3e\n", what, error);
  return error;
}

// A small config in diffusers' SD style: quant convs on, two blocks, two layers per block.
AutoencoderKLConfig small_config() {
  AutoencoderKLConfig config;
  config.block_out_channels = {8, 16};
  config.down_block_types = {"DownEncoderBlock2D", "DownEncoderBlock2D"};
  config.up_block_types = {"UpDecoderBlock2D", "UpDecoderBlock2D"};
  config.layers_per_block = 2;
  config.norm_num_groups = 4;
  return config;
}

bool has_parameter(torch::nn::Module& module, const std::string& name) {
  return module.named_parameters().find(name) != nullptr;
}

}  // namespace

TEST(AutoencoderKL, DecodeMatchesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& ref = test::tiny_flux_reference();
  at::NoGradGuard no_grad;
  at::Tensor decoded = tiny_vae()->decode(ref.load("vae_decoder_input", at::kFloat, test::test_device()));
  at::Tensor expected = ref.load("vae_decoded");
  EXPECT_EQ(decoded.device(), test::test_device());
  EXPECT_TENSORS_CLOSE(decoded, expected, 1e-4);
  report("decode(vae_decoder_input) vs vae_decoded", decoded, expected);
}

TEST(AutoencoderKL, EncodeMeanMatchesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& ref = test::tiny_flux_reference();
  at::NoGradGuard no_grad;
  const at::Tensor images = ref.load("vae_encoder_input", at::kFloat, test::test_device());
  at::Tensor mean = tiny_vae()->encode_mean(images);
  at::Tensor expected = ref.load("vae_encoder_latent_dist_mean");
  EXPECT_TENSORS_CLOSE(mean, expected, 1e-4);
  report("encode_mean(vae_encoder_input) vs latent_dist.mean", mean, expected);

  auto [same_mean, logvar] = tiny_vae()->encode_moments(images);
  EXPECT_TRUE(same_mean.equal(mean));
  EXPECT_EQ(logvar.sizes(), mean.sizes());
  EXPECT_LE(logvar.max().item<float>(), 20.0f);
  EXPECT_GE(logvar.min().item<float>(), -30.0f);
}

TEST(AutoencoderKL, UnscaledLatentsAreTheDecoderInput) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& ref = test::tiny_flux_reference();
  const auto& config = tiny_vae()->config();
  EXPECT_DOUBLE_EQ(config.scaling_factor, 0.3611);
  EXPECT_DOUBLE_EQ(config.shift_factor.value(), 0.1159);
  at::Tensor decoder_input = unscale_latents(ref.load("latents_unpacked"), config);
  EXPECT_TENSORS_CLOSE(decoder_input, ref.load("vae_decoder_input"), 1e-6);
  report("unscale_latents(latents_unpacked) vs vae_decoder_input", decoder_input, ref.load("vae_decoder_input"));
  EXPECT_TENSORS_CLOSE(scale_latents(decoder_input, config), ref.load("latents_unpacked"), 1e-6);
}

TEST(AutoencoderKL, DecodeInBFloat16StaysClose) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& ref = test::tiny_flux_reference();
  at::NoGradGuard no_grad;
  AutoencoderKL vae = load_autoencoder_kl(test::tiny_flux_pipeline() / "vae", at::kBFloat16, test::test_device());
  for (const auto& p : vae->parameters()) ASSERT_EQ(p.scalar_type(), at::kBFloat16);
  at::Tensor decoded = vae->decode(ref.load("vae_decoder_input", at::kBFloat16, test::test_device()));
  EXPECT_EQ(decoded.scalar_type(), at::kBFloat16);
  EXPECT_TENSORS_CLOSE(decoded, ref.load("vae_decoded"), 5e-2);
  report("bf16 decode vs float32 vae_decoded", decoded, ref.load("vae_decoded"));
}

TEST(AutoencoderKL, HasExactlyTheCheckpointNames) {
  DIFFUSE_REQUIRE_FIXTURES();
  Checkpoint checkpoint = Checkpoint::open(test::tiny_flux_pipeline() / "vae");
  AutoencoderKL vae(tiny_vae()->config(), at::kFloat);
  const auto params = vae->named_parameters();
  EXPECT_EQ(params.size(), checkpoint.tensors().size());
  for (const auto& info : checkpoint.tensors()) EXPECT_NE(params.find(info.name), nullptr) << info.name;
  EXPECT_FALSE(has_parameter(*vae, "quant_conv.weight"));
  EXPECT_FALSE(has_parameter(*vae, "post_quant_conv.weight"));
}

TEST(AutoencoderKL, QuantConvsAndLayoutFollowTheConfig) {
  at::NoGradGuard no_grad;
  AutoencoderKL vae(small_config(), at::kFloat);
  init_random_parameters(*vae, 0);
  for (const char* name :
       {"quant_conv.weight", "post_quant_conv.weight", "encoder.down_blocks.0.resnets.1.conv2.weight",
        "encoder.down_blocks.0.downsamplers.0.conv.weight", "decoder.up_blocks.0.resnets.2.conv1.weight",
        "decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.mid_block.attentions.0.to_out.0.weight"})
    EXPECT_TRUE(has_parameter(*vae, name)) << name;
  EXPECT_FALSE(has_parameter(*vae, "encoder.down_blocks.1.downsamplers.0.conv.weight"));
  EXPECT_FALSE(has_parameter(*vae, "decoder.up_blocks.1.upsamplers.0.conv.weight"));

  // Odd sizes: Downsample2D's (0, 1, 0, 1) padding halves rounding down, as diffusers does.
  at::Tensor images = at::randn({2, 3, 17, 10});
  auto [mean, logvar] = vae->encode_moments(images);
  EXPECT_EQ(mean.sizes(), (std::vector<int64_t>{2, 4, 8, 5}));
  at::Tensor decoded = vae->decode(mean);
  EXPECT_EQ(decoded.sizes(), (std::vector<int64_t>{2, 3, 16, 10}));
  EXPECT_TRUE(at::isfinite(decoded).all().item<bool>());
}

TEST(AutoencoderKL, MidBlockWithoutAttention) {
  AutoencoderKLConfig config = small_config();
  config.mid_block_add_attention = false;
  AutoencoderKL vae(config, at::kFloat);
  init_random_parameters(*vae, 0);
  for (const auto& item : vae->named_parameters())
    EXPECT_EQ(item.key().find("attentions"), std::string::npos) << item.key();
  at::NoGradGuard no_grad;
  EXPECT_EQ(vae->decode(at::randn({1, 4, 3, 5})).sizes(), (std::vector<int64_t>{1, 3, 6, 10}));
}

TEST(AutoencoderKL, Errors) {
  AutoencoderKLConfig config = small_config();
  AutoencoderKL vae(config, at::kFloat);
  EXPECT_THROW(vae->decode(at::zeros({1, 3, 4, 4})), Error);    // 3 channels, not latent_channels
  EXPECT_THROW(vae->encode_mean(at::zeros({3, 8, 8})), Error);  // no batch dimension

  AutoencoderKLConfig wrong_block = config;
  wrong_block.down_block_types[0] = "AttnDownEncoderBlock2D";
  EXPECT_THROW((AutoencoderKL(wrong_block, at::kFloat)), Error);
  AutoencoderKLConfig wrong_groups = config;
  wrong_groups.norm_num_groups = 3;  // 8 channels do not split into 3 groups
  EXPECT_THROW((AutoencoderKL(wrong_groups, at::kFloat)), Error);
  AutoencoderKLConfig wrong_act = config;
  wrong_act.act_fn = "swishy";
  try {
    AutoencoderKL vae2(wrong_act, at::kFloat);
    FAIL() << "expected an error for act_fn";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("swishy"), std::string::npos) << e.what();
  }

  // A folder whose weights do not fit the config names the missing tensors.
  DIFFUSE_REQUIRE_FIXTURES();
  const auto folder = test::temporary_folder("vae_mismatch");
  std::filesystem::copy_file(test::tiny_flux_pipeline() / "vae" / "diffusion_pytorch_model.safetensors",
                             folder / "diffusion_pytorch_model.safetensors");
  {
    std::ofstream out(folder / "config.json");
    out << R"({"_class_name": "AutoencoderKL", "block_out_channels": [8, 16, 16, 16], "latent_channels": 4,
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
      "norm_num_groups": 4, "layers_per_block": 1})";
  }
  try {
    load_autoencoder_kl(folder);
    FAIL() << "expected a weight mismatch";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("quant_conv.weight"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_autoencoder_kl(folder / "absent"), Error);
}
