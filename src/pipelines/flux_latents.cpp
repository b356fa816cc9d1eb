#include "diffuse/pipelines/flux_latents.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <string>

#include "diffuse/error.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"

namespace diffuse {

int64_t flux_latent_size(int64_t pixels, int64_t vae_scale_factor) {
  if (vae_scale_factor < 1) throw Error("vae_scale_factor must be positive, got " + std::to_string(vae_scale_factor));
  if (pixels < 0) throw Error("image size must be non-negative, got " + std::to_string(pixels));
  // The VAE divides by vae_scale_factor and packing needs an even grid.
  return 2 * (pixels / (vae_scale_factor * 2));
}

int64_t flux_image_seq_len(int64_t height, int64_t width, int64_t vae_scale_factor) {
  const int64_t h = flux_latent_size(height, vae_scale_factor), w = flux_latent_size(width, vae_scale_factor);
  if (h == 0 || w == 0)
    throw Error("image of " + std::to_string(height) + "x" + std::to_string(width) +
                " pixels is too small: FLUX needs at least " + std::to_string(2 * vae_scale_factor) +
                " pixels per side (vae_scale_factor " + std::to_string(vae_scale_factor) + " x 2x2 patches)");
  return (h / 2) * (w / 2);
}

at::Tensor pack_latents(const at::Tensor& latents) {
  if (latents.dim() != 4 || latents.size(2) % 2 != 0 || latents.size(3) % 2 != 0)
    throw Error("pack_latents: expected [batch, channels, height, width] with even height and width, got " +
                c10::str(latents.sizes()));
  const int64_t b = latents.size(0), c = latents.size(1), h = latents.size(2), w = latents.size(3);
  return latents.reshape({b, c, h / 2, 2, w / 2, 2}).permute({0, 2, 4, 1, 3, 5}).reshape({b, (h / 2) * (w / 2), c * 4});
}

at::Tensor unpack_latents(const at::Tensor& latents, int64_t height, int64_t width, int64_t vae_scale_factor) {
  const int64_t h = flux_latent_size(height, vae_scale_factor), w = flux_latent_size(width, vae_scale_factor);
  if (latents.dim() != 3 || latents.size(1) != (h / 2) * (w / 2) || latents.size(2) % 4 != 0)
    throw Error("unpack_latents: expected [batch, " + std::to_string((h / 2) * (w / 2)) + ", channels * 4] for a " +
                std::to_string(height) + "x" + std::to_string(width) + " image (vae_scale_factor " +
                std::to_string(vae_scale_factor) + "), got " + c10::str(latents.sizes()));
  const int64_t b = latents.size(0), c = latents.size(2) / 4;
  return latents.reshape({b, h / 2, w / 2, c, 2, 2}).permute({0, 3, 1, 4, 2, 5}).reshape({b, c, h, w});
}

at::Tensor prepare_latent_image_ids(int64_t height, int64_t width, const at::TensorOptions& options) {
  if (height < 0 || width < 0)
    throw Error("prepare_latent_image_ids: negative grid " + std::to_string(height) + "x" + std::to_string(width));
  at::Tensor ids = at::zeros({height, width, 3}, at::kFloat);
  ids.select(2, 1).add_(at::arange(height, at::kFloat).unsqueeze(1));
  ids.select(2, 2).add_(at::arange(width, at::kFloat).unsqueeze(0));
  return ids.reshape({height * width, 3}).to(options);
}

at::Generator cpu_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

at::Tensor randn_tensor(at::IntArrayRef shape, std::optional<at::Generator> generator,
                        const at::TensorOptions& options) {
  const c10::Device device = options.device();
  if (!generator) return at::randn(shape, options);
  const c10::Device generator_device = generator->device();
  if (generator_device.type() != device.type() && generator_device.type() != c10::kCPU)
    throw Error("randn_tensor: cannot draw a " + device.str() + " tensor from a " + generator_device.str() +
                " generator (use a CPU generator or one of the target device)");
  // Drawing on the CPU and moving is what makes a CPU seed give the same latents on every device.
  at::Tensor noise = at::randn(shape, *generator, options.device(generator_device));
  return noise.to(device);
}

at::Tensor randn_tensor(at::IntArrayRef shape, const std::vector<at::Generator>& generators,
                        const at::TensorOptions& options) {
  if (generators.empty()) return randn_tensor(shape, std::nullopt, options);
  if (generators.size() == 1) return randn_tensor(shape, generators.front(), options);
  if (shape.empty() || shape[0] != static_cast<int64_t>(generators.size()))
    throw Error("randn_tensor: " + std::to_string(generators.size()) + " generators for a batch of " +
                (shape.empty() ? std::string("0") : std::to_string(shape[0])) + "; give one per batch entry");
  std::vector<int64_t> one(shape.begin(), shape.end());
  one[0] = 1;
  std::vector<at::Tensor> parts;
  for (const auto& generator : generators) parts.push_back(randn_tensor(one, generator, options));
  return at::cat(parts, 0);
}

namespace {

std::vector<int64_t> noise_shape(int64_t batch_size, int64_t num_channels_latents, int64_t height, int64_t width,
                                 int64_t vae_scale_factor) {
  if (batch_size < 1 || num_channels_latents < 1)
    throw Error("prepare_latents: batch_size and num_channels_latents must be positive, got " +
                std::to_string(batch_size) + " and " + std::to_string(num_channels_latents));
  flux_image_seq_len(height, width, vae_scale_factor);  // throws for an image too small for one token
  return {batch_size, num_channels_latents, flux_latent_size(height, vae_scale_factor),
          flux_latent_size(width, vae_scale_factor)};
}

}  // namespace

at::Tensor prepare_latents(int64_t batch_size, int64_t num_channels_latents, int64_t height, int64_t width,
                           int64_t vae_scale_factor, c10::ScalarType dtype, c10::Device device,
                           std::optional<at::Generator> generator) {
  auto shape = noise_shape(batch_size, num_channels_latents, height, width, vae_scale_factor);
  return pack_latents(randn_tensor(shape, std::move(generator), at::TensorOptions(dtype).device(device)));
}

at::Tensor prepare_latents(int64_t batch_size, int64_t num_channels_latents, int64_t height, int64_t width,
                           int64_t vae_scale_factor, c10::ScalarType dtype, c10::Device device,
                           const std::vector<at::Generator>& generators) {
  auto shape = noise_shape(batch_size, num_channels_latents, height, width, vae_scale_factor);
  return pack_latents(randn_tensor(shape, generators, at::TensorOptions(dtype).device(device)));
}

std::vector<double> flux_sigmas(int64_t num_inference_steps) {
  if (num_inference_steps < 1)
    throw Error("flux_sigmas: num_inference_steps must be positive, got " + std::to_string(num_inference_steps));
  return numpy_linspace(1.0, 1.0 / static_cast<double>(num_inference_steps), num_inference_steps);
}

}  // namespace diffuse
