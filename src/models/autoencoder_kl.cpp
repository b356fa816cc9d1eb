#include "diffuse/models/autoencoder_kl.hpp"

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/models/weights.hpp"

namespace diffuse {
namespace {

void check_input(const at::Tensor& input, const char* what, int64_t channels) {
  if (input.dim() != 4 || input.size(1) != channels)
    throw Error(std::string("AutoencoderKL::") + what + ": expected [batch, " + std::to_string(channels) +
                ", height, width], got " + c10::str(input.sizes()));
}

}  // namespace

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLConfig& config, const at::TensorOptions& options)
    : config_(config) {
  if (config.block_out_channels.empty() || config.down_block_types.size() != config.block_out_channels.size() ||
      config.up_block_types.size() != config.block_out_channels.size())
    throw Error(
        "AutoencoderKL: down_block_types, up_block_types and block_out_channels must have the same, "
        "non-zero length");
  try {
    activation(at::zeros({1}), config.act_fn);
  } catch (const Error& e) {
    throw Error(std::string("AutoencoderKL: act_fn: ") + e.what());
  }
  encoder = register_module("encoder", vae::Encoder(config, options));
  decoder = register_module("decoder", vae::Decoder(config, options));
  const int64_t latent = config.latent_channels;
  if (config.use_quant_conv)
    quant_conv = register_module("quant_conv", Conv2d(2 * latent, 2 * latent, 1, 1, 0, true, options));
  if (config.use_post_quant_conv)
    post_quant_conv = register_module("post_quant_conv", Conv2d(latent, latent, 1, 1, 0, true, options));
}

std::pair<at::Tensor, at::Tensor> AutoencoderKLImpl::encode_moments(const at::Tensor& images) {
  check_input(images, "encode", config_.in_channels);
  at::Tensor moments = encoder(images);
  if (quant_conv) moments = forward_unit(*quant_conv, moments);
  auto halves = moments.chunk(2, /*dim=*/1);
  return {halves[0], at::clamp(halves[1], -30.0, 20.0)};
}

at::Tensor AutoencoderKLImpl::encode_mean(const at::Tensor& images) { return encode_moments(images).first; }

at::Tensor AutoencoderKLImpl::decode(const at::Tensor& latents) {
  check_input(latents, "decode", config_.latent_channels);
  at::Tensor z = post_quant_conv ? forward_unit(*post_quant_conv, latents) : latents;
  return decoder(z);
}

AutoencoderKL load_autoencoder_kl(const std::filesystem::path& folder, c10::ScalarType dtype, c10::Device device) {
  return load_pretrained<AutoencoderKL, AutoencoderKLConfig>(folder, {.dtype = dtype, .device = device});
}

at::Tensor scale_latents(const at::Tensor& latents, const AutoencoderKLConfig& config) {
  return (latents - config.shift_factor.value_or(0.0)) * config.scaling_factor;
}

at::Tensor unscale_latents(const at::Tensor& latents, const AutoencoderKLConfig& config) {
  return latents / config.scaling_factor + config.shift_factor.value_or(0.0);
}

std::vector<std::string> AutoencoderKLImpl::unit_containers() const {
  return {"", "encoder", "decoder", "encoder.down_blocks", "decoder.up_blocks"};
}

uint64_t AutoencoderKLImpl::activation_estimate() const {
  // Decoding at 1024x1024: a few full-resolution maps of the first block's channels.
  return uint64_t{1024} * 1024 * static_cast<uint64_t>(config_.block_out_channels.front()) * 6 * weight_element_bytes(*this);
}

}  // namespace diffuse
