// FluxPipeline's latent layout against diffusers: the seeded initial noise (bit for bit from a CPU
// generator), packing and unpacking, the image position ids, and the sizes that do not fit.

#include <cstdio>

#include "diffuse/error.hpp"
#include "diffuse/pipelines/flux_latents.hpp"
#include "support/test_support.hpp"

using namespace diffuse;

TEST(FluxLatents, SeededLatentsMatchDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& ref = test::tiny_flux_reference();
  // reference.json: height 64, width 96, transformer in_channels 16 -> 4 latent channels, vae_scale_factor 8.
  // Drawn on the CPU whatever the target device, so the values do not depend on it.
  at::Tensor latents = prepare_latents(1, 4, 64, 96, 8, at::kFloat, test::test_device(), cpu_generator(0));
  EXPECT_EQ(latents.device(), test::test_device());
  EXPECT_EQ(latents.sizes(), (std::vector<int64_t>{1, 24, 16}));
  EXPECT_TENSORS_CLOSE(latents, ref.load("latents_init"), 1e-4);
  test::print_error("prepare_latents(seed 0) vs latents_init", latents, ref.load("latents_init"));
}

TEST(FluxLatents, ImageIdsMatchDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& ref = test::tiny_flux_reference();
  at::Tensor ids = prepare_latent_image_ids(flux_latent_size(64) / 2, flux_latent_size(96) / 2);
  EXPECT_EQ(ids.scalar_type(), at::kFloat);
  EXPECT_TRUE(ids.equal(ref.load("latent_image_ids")));
  test::print_error("latent_image_ids", ids, ref.load("latent_image_ids"));
  EXPECT_EQ(prepare_latent_image_ids(2, 3, at::kBFloat16).scalar_type(), at::kBFloat16);
  EXPECT_TRUE(prepare_latent_image_ids(2, 3)[4].equal(at::tensor({0.0f, 1.0f, 1.0f})));  // row 1, col 1
}

TEST(FluxLatents, UnpackMatchesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& ref = test::tiny_flux_reference();
  at::Tensor unpacked = unpack_latents(ref.load("latents_final"), 64, 96, 8);
  EXPECT_TRUE(unpacked.equal(ref.load("latents_unpacked")));
  test::print_error("unpack_latents(latents_final) vs latents_unpacked", unpacked, ref.load("latents_unpacked"));
  EXPECT_TRUE(pack_latents(unpacked).equal(ref.load("latents_final")));
}

TEST(FluxLatents, PackLayoutIsPatchMajor) {
  // One token per 2x2 patch; its features run channel-major, then row, then column of the patch.
  at::Tensor latents = at::arange(2 * 4 * 6, at::kFloat).reshape({1, 2, 4, 6});
  at::Tensor packed = pack_latents(latents);
  ASSERT_EQ(packed.sizes(), (std::vector<int64_t>{1, 6, 8}));
  // Token 1 is the patch at rows 0-1, cols 2-3.
  EXPECT_TRUE(packed[0][1].equal(at::tensor({2.0f, 3.0f, 8.0f, 9.0f, 26.0f, 27.0f, 32.0f, 33.0f})));
  EXPECT_TRUE(unpack_latents(packed, 4 * 8, 6 * 8, 8).equal(latents));
}

TEST(FluxLatents, SizesRoundDownAsDiffusers) {
  EXPECT_EQ(flux_latent_size(64), 8);
  EXPECT_EQ(flux_latent_size(70), 8);  // not a multiple of 16: diffusers rounds down
  EXPECT_EQ(flux_latent_size(1024), 128);
  EXPECT_EQ(flux_image_seq_len(64, 96), 24);
  EXPECT_EQ(flux_image_seq_len(1024, 1024), 4096);
  EXPECT_EQ(flux_image_seq_len(70, 100), 4 * 6);
  EXPECT_EQ(prepare_latents(2, 4, 70, 100, 8, at::kFloat, at::kCPU, cpu_generator(1)).sizes(),
            (std::vector<int64_t>{2, 24, 16}));
}

TEST(FluxLatents, GeneratorsPerBatchEntry) {
  // A list draws each entry from its own generator; a list of one is that generator.
  at::Tensor both =
      prepare_latents(2, 4, 64, 96, 8, at::kFloat, at::kCPU, std::vector{cpu_generator(0), cpu_generator(5)});
  at::Tensor first = prepare_latents(1, 4, 64, 96, 8, at::kFloat, at::kCPU, cpu_generator(0));
  at::Tensor second = prepare_latents(1, 4, 64, 96, 8, at::kFloat, at::kCPU, cpu_generator(5));
  EXPECT_TRUE(both[0].equal(first[0]));
  EXPECT_TRUE(both[1].equal(second[0]));
  EXPECT_TRUE(prepare_latents(1, 4, 64, 96, 8, at::kFloat, at::kCPU, std::vector{cpu_generator(0)}).equal(first));
  // A bfloat16 draw is a different stream (diffusers draws in the target dtype), but deterministic.
  at::Tensor bf16 = prepare_latents(1, 4, 64, 96, 8, at::kBFloat16, at::kCPU, cpu_generator(0));
  EXPECT_EQ(bf16.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(bf16.equal(prepare_latents(1, 4, 64, 96, 8, at::kBFloat16, at::kCPU, cpu_generator(0))));
}

TEST(FluxLatents, Errors) {
  EXPECT_THROW(pack_latents(at::zeros({1, 4, 7, 8})), Error);              // odd height
  EXPECT_THROW(pack_latents(at::zeros({4, 8, 8})), Error);                 // no batch dimension
  EXPECT_THROW(unpack_latents(at::zeros({1, 24, 16}), 64, 64, 8), Error);  // 24 tokens are not 64x64
  EXPECT_THROW(unpack_latents(at::zeros({1, 24, 15}), 64, 96, 8), Error);  // channels not a multiple of 4
  EXPECT_THROW(flux_image_seq_len(8, 96), Error);                          // under 16 pixels: no token
  EXPECT_THROW(prepare_latents(1, 4, 15, 96, 8, at::kFloat, at::kCPU, cpu_generator(0)), Error);
  EXPECT_THROW(prepare_latents(0, 4, 64, 96, 8, at::kFloat, at::kCPU, cpu_generator(0)), Error);
  EXPECT_THROW(prepare_latents(3, 4, 64, 96, 8, at::kFloat, at::kCPU, std::vector{cpu_generator(0), cpu_generator(1)}),
               Error);
  EXPECT_THROW(flux_latent_size(64, 0), Error);
  EXPECT_THROW(flux_sigmas(0), Error);
}
