#pragma once
// How FluxPipeline lays out its latents. The VAE's [B, C, H, W] latents are cut into 2x2 patches, and
// each patch becomes one token of C*4 features: H/2 * W/2 "image tokens" that the transformer sees,
// with (0, row, col) position ids for the rotary embedding. The initial noise is drawn exactly as
// diffusers' randn_tensor draws it, so a seeded CPU generator gives diffusers' latents bit for bit.

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace diffuse {

// The latent grid side for an image side: 2 * (pixels / (vae_scale_factor * 2)), rounded down to an
// even number as FluxPipeline does (64 px -> 8 with vae_scale_factor 8; 70 px -> 8 too).
int64_t flux_latent_size(int64_t pixels, int64_t vae_scale_factor = 8);

// The number of image tokens for an image (latents.shape[1] after packing); calculate_shift takes it.
// Throws diffuse::Error when the image is too small to give one token (under 2 * vae_scale_factor).
int64_t flux_image_seq_len(int64_t height, int64_t width, int64_t vae_scale_factor = 8);

// [B, C, H, W] -> [B, (H/2)*(W/2), C*4]; H and W must be even. (diffusers' _pack_latents)
at::Tensor pack_latents(const at::Tensor& latents);

// [B, (h/2)*(w/2), C*4] -> [B, C, h, w] with h, w = flux_latent_size(height, width) for the image's
// height and width in pixels. (diffusers' _unpack_latents)
at::Tensor unpack_latents(const at::Tensor& latents, int64_t height, int64_t width, int64_t vae_scale_factor = 8);

// [h*w, 3]: row-major (0, row, col) for a grid of h x w tokens (the packed grid, i.e. the latent size / 2).
at::Tensor prepare_latent_image_ids(int64_t height, int64_t width, const at::TensorOptions& options = {});

// diffusers' randn_tensor: standard normal values of `options`' dtype, drawn on the generator's device
// (a CPU generator for a CUDA tensor draws on the CPU, then moves the result), or with the device's
// default generator when there is none. A list draws one batch entry per generator; a list of one is
// the same as that generator alone.
at::Tensor randn_tensor(at::IntArrayRef shape, std::optional<at::Generator> generator,
                        const at::TensorOptions& options);
at::Tensor randn_tensor(at::IntArrayRef shape, const std::vector<at::Generator>& generators,
                        const at::TensorOptions& options);

// A CPU generator in the state torch.Generator("cpu").manual_seed(seed) leaves it in.
at::Generator cpu_generator(uint64_t seed);

// FluxPipeline.prepare_latents without given latents: noise of shape
// [batch, num_channels_latents, flux_latent_size(height), flux_latent_size(width)] from randn_tensor,
// packed to [batch, image_seq_len, num_channels_latents * 4]. num_channels_latents is the
// transformer's in_channels / 4. Pair it with prepare_latent_image_ids(latent h / 2, latent w / 2).
at::Tensor prepare_latents(int64_t batch_size, int64_t num_channels_latents, int64_t height, int64_t width,
                           int64_t vae_scale_factor, c10::ScalarType dtype, c10::Device device,
                           std::optional<at::Generator> generator);
at::Tensor prepare_latents(int64_t batch_size, int64_t num_channels_latents, int64_t height, int64_t width,
                           int64_t vae_scale_factor, c10::ScalarType dtype, c10::Device device,
                           const std::vector<at::Generator>& generators);

// The unshifted sigmas FluxPipeline hands the scheduler: numpy.linspace(1, 1/n, n).
std::vector<double> flux_sigmas(int64_t num_inference_steps);

}  // namespace diffuse
