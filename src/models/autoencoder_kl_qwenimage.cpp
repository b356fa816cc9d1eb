#include "diffuse/models/autoencoder_kl_qwenimage.hpp"

#include <algorithm>

#include "diffuse/error.hpp"

namespace diffuse {
namespace {

// Qwen-Image's square size, for the activation estimate.
constexpr uint64_t kEstimateSize = 1328;

// Checks a video-shaped input of one frame with `channels` channels in the model's dtype.
void check_input(const at::Tensor& input, const char* what, const char* layout, int64_t channels,
                 c10::ScalarType dtype) {
  const std::string where = std::string("AutoencoderKLQwenImage::") + what + ": ";
  if (!input.defined()) throw Error(where + "the input is an undefined tensor");
  if (input.dim() != 5 || input.size(1) != channels)
    throw Error(where + "expected " + layout + " with " + std::to_string(channels) + " channels, got " +
                c10::str(input.sizes()) +
                (input.dim() == 4 ? " (a 4-D image batch: add the frame axis, unsqueeze(2))" : ""));
  if (input.size(2) != 1)
    throw Error(where + "got " + std::to_string(input.size(2)) +
                " frames; only one frame (an image) is supported (diffusers runs more frames through causal "
                "feature caches, which diffuse does not implement)");
  if (input.size(0) == 0 || input.size(3) == 0 || input.size(4) == 0)
    throw Error(where + "empty input " + c10::str(input.sizes()));
  if (input.scalar_type() != dtype)
    throw Error(where + "the input is " + std::string(c10::toString(input.scalar_type())) +
                " but the model's weights are " + c10::toString(dtype) + " (convert the input with .to())");
}

// The mean and 1 / std as diffusers' pipeline makes them: torch.tensor(list) in float32, viewed as
// [1, z_dim, 1, ...] for latents of rank `dim`, then cast to the latents' dtype and device (1 / std is
// taken after the cast, as `1.0 / torch.tensor(std).to(dtype)` does, which Python computes as reciprocal).
std::pair<at::Tensor, at::Tensor> latent_statistics(const at::Tensor& latents,
                                                    const AutoencoderKLQwenImageConfig& config, const char* what) {
  const int64_t z = config.z_dim;
  if (!latents.defined() || latents.dim() < 2 || latents.size(1) != z)
    throw Error(std::string(what) + ": expected latents [batch, " + std::to_string(z) + " (z_dim), ...], got " +
                (latents.defined() ? c10::str(latents.sizes()) : std::string("an undefined tensor")));
  if (!at::isFloatingType(latents.scalar_type()))
    throw Error(std::string(what) + ": latents must be floating point, not " + c10::toString(latents.scalar_type()));
  std::vector<int64_t> shape(static_cast<size_t>(latents.dim()), 1);
  shape[1] = z;
  const auto as_tensor = [&](const std::vector<double>& values) {
    return at::tensor(values, at::kDouble).to(at::kFloat).view(shape).to(latents.device(), latents.scalar_type());
  };
  return {as_tensor(config.latents_mean), at::reciprocal(as_tensor(config.latents_std))};
}

// The most elements alive at once in one residual block: its input, the conv_shortcut output when the
// width changes, and three maps of its output width (two temporaries and the output).
uint64_t residual_peak(uint64_t in, uint64_t out, uint64_t pixels) {
  return (in + (in != out ? out : 0) + 3 * out) * pixels;
}

}  // namespace

AutoencoderKLQwenImageImpl::AutoencoderKLQwenImageImpl(const AutoencoderKLQwenImageConfig& config,
                                                       const at::TensorOptions& options)
    : config_(config) {
  config_.validate("AutoencoderKLQwenImage config");
  encoder = register_module("encoder", qwenimage_vae::Encoder3d(config_, options));
  const int64_t z = config_.z_dim;
  quant_conv = register_module("quant_conv", qwenimage_vae::CausalConv3d(2 * z, 2 * z, 1, 0, options));
  post_quant_conv = register_module("post_quant_conv", qwenimage_vae::CausalConv3d(z, z, 1, 0, options));
  decoder = register_module("decoder", qwenimage_vae::Decoder3d(config_, options));
}

std::pair<at::Tensor, at::Tensor> AutoencoderKLQwenImageImpl::encode_moments(const at::Tensor& images) {
  check_input(images, "encode", "images [batch, channels, 1, height, width]", config_.input_channels,
              quant_conv->weight.scalar_type());
  const int64_t f = config_.spatial_compression_ratio();
  if (images.size(3) < f || images.size(4) < f)
    throw Error("AutoencoderKLQwenImage::encode: images of " + std::to_string(images.size(3)) + "x" +
                std::to_string(images.size(4)) + " are too small for " +
                std::to_string(config_.temperal_downsample.size()) + " halvings (at least " + std::to_string(f) +
                " pixels per side)");
  const at::Tensor moments = forward_unit(*quant_conv, encoder->forward(images));
  const auto halves = moments.chunk(2, /*dim=*/1);
  return {halves[0], at::clamp(halves[1], -30.0, 20.0)};
}

at::Tensor AutoencoderKLQwenImageImpl::encode(const at::Tensor& images) { return encode_moments(images).first; }

at::Tensor AutoencoderKLQwenImageImpl::decode(const at::Tensor& latents) {
  check_input(latents, "decode", "latents [batch, z_dim, 1, height, width]", config_.z_dim,
              post_quant_conv->weight.scalar_type());
  const at::Tensor decoded = decoder->forward(forward_unit(*post_quant_conv, latents));
  return at::clamp(decoded, -1.0, 1.0);
}

void AutoencoderKLQwenImageImpl::set_attention_backend(AttentionBackend backend) {
  backend_ = backend;
  qwenimage_vae::set_attention_backend(*this, backend);
}

at::Tensor scale_latents(const at::Tensor& latents, const AutoencoderKLQwenImageConfig& config) {
  const auto [mean, inverse_std] = latent_statistics(latents, config, "scale_latents");
  return (latents - mean) * inverse_std;
}

at::Tensor unscale_latents(const at::Tensor& latents, const AutoencoderKLQwenImageConfig& config) {
  const auto [mean, inverse_std] = latent_statistics(latents, config, "unscale_latents");
  return latents / inverse_std + mean;
}

std::vector<std::string> AutoencoderKLQwenImageImpl::unit_containers() const {
  return {"", "encoder", "decoder", "encoder.down_blocks", "decoder.up_blocks"};
}

uint64_t AutoencoderKLQwenImageImpl::activation_estimate() const {
  // Walks the decoder and the encoder at 1328x1328 (one image, one frame) and takes the largest set of
  // maps one unit holds at once. The attention blocks hold q, k, v and their output at the widest
  // level's resolution, plus (math path) at most 3 slices of float32 scores (qwenimage_vae_blocks.cpp).
  const auto& c = config_;
  const uint64_t base = static_cast<uint64_t>(c.base_dim);
  const size_t n = c.dim_mult.size();
  const uint64_t f = static_cast<uint64_t>(c.spatial_compression_ratio());
  uint64_t peak = 0;
  auto attention_peak = [](uint64_t dim, uint64_t pixels) { return 6 * dim * pixels; };

  // Decoder, from the latents up.
  uint64_t side = kEstimateSize / f;
  std::vector<uint64_t> dims = {base * static_cast<uint64_t>(c.dim_mult.back())};
  for (size_t i = 0; i < n; ++i) dims.push_back(base * static_cast<uint64_t>(c.dim_mult[n - 1 - i]));
  peak = std::max({peak, residual_peak(dims[0], dims[0], side * side), attention_peak(dims[0], side * side)});
  for (size_t i = 0; i < n; ++i) {
    const uint64_t in = i == 0 ? dims[0] : dims[i] / 2, out = dims[i + 1];
    peak = std::max(peak, residual_peak(in, out, side * side));
    if (i + 1 != n) {
      // Upsampling: the input, its nearest 2x copy, and the conv's output of half the width.
      const uint64_t up = 4 * side * side;
      peak = std::max(peak, out * side * side + out * up + out / 2 * up);
      side *= 2;
    }
  }
  peak = std::max(peak, 3 * dims.back() * side * side);

  // Encoder, from the image down.
  side = kEstimateSize;
  uint64_t in = base;
  peak = std::max(peak, (static_cast<uint64_t>(c.input_channels) + base) * side * side);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t out = base * static_cast<uint64_t>(c.dim_mult[i]);
    peak = std::max({peak, residual_peak(in, out, side * side), residual_peak(out, out, side * side)});
    if (!c.attn_scales.empty()) peak = std::max(peak, attention_peak(out, side * side));
    in = out;
    if (i + 1 != n) {
      // Downsampling: the input, its zero-padded copy and the output a quarter the size.
      peak = std::max(peak, out * side * side + out * (side + 1) * (side + 1) + out * side * side / 4);
      side /= 2;
    }
  }

  const uint64_t scores = 3 * (uint64_t{1} << 26) * 4;  // float32 score slices, math path
  const uint64_t bytes = peak * weight_element_bytes(*this);
  return std::max(bytes, scores) + bytes / 4;  // a quarter more for convolution workspaces
}

}  // namespace diffuse
