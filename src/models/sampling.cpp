#include "diffuse/models/sampling.hpp"

#include <string>

#include "diffuse/error.hpp"

namespace diffuse {

Downsample2DImpl::Downsample2DImpl(const Downsample2DOptions& downsample, const at::TensorOptions& options)
    : options_(downsample) {
  Downsample2DOptions& o = options_;
  if (o.out_channels == 0) o.out_channels = o.channels;
  if (!o.use_conv && o.out_channels != o.channels)
    throw Error("Downsample2D: average pooling cannot change the channels (" + std::to_string(o.channels) + " -> " +
                std::to_string(o.out_channels) + ")");
  if (o.use_conv)
    conv = register_module("conv", Conv2d(o.channels, o.out_channels, 3, /*stride=*/2, o.padding, true, options));
}

at::Tensor Downsample2DImpl::forward(const at::Tensor& input) {
  if (!options_.use_conv) return at::avg_pool2d(input, {2, 2}, {2, 2});
  // (left, right, top, bottom): the asymmetric padding of the original LDM VAE.
  if (options_.padding == 0) return conv(at::constant_pad_nd(input, {0, 1, 0, 1}, 0));
  return conv(input);
}

at::Tensor upsample_nearest_2x(const at::Tensor& input) {
  // A broadcast copy instead of upsample_nearest2d: identical values, and it works for bfloat16 on
  // the CPU with libtorch < 2.1, where that kernel does not (diffusers upcasts there for that reason).
  const int64_t b = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3);
  if (input.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
    // The same copy over [B, H, W, C], so that channels-last maps stay channels-last.
    const at::Tensor nhwc = input.permute({0, 2, 3, 1});
    return nhwc.reshape({b, h, 1, w, 1, c}).expand({b, h, 2, w, 2, c}).reshape({b, 2 * h, 2 * w, c}).permute({0, 3, 1, 2});
  }
  return input.reshape({b, c, h, 1, w, 1}).expand({b, c, h, 2, w, 2}).reshape({b, c, 2 * h, 2 * w});
}

at::Tensor upsample_nearest(const at::Tensor& input, const std::vector<int64_t>& output_size) {
  if (output_size.size() != 2 || output_size[0] <= 0 || output_size[1] <= 0)
    throw Error("upsample_nearest: the output size must be {height, width}, both positive");
  // The CPU kernel of libtorch < 2.1 has no half-precision version; copying values through float32
  // is exact, so every device gives the same result.
  const bool upcast = input.is_cpu() && (input.scalar_type() == at::kBFloat16 || input.scalar_type() == at::kHalf);
  const at::Tensor x = upcast ? input.to(at::kFloat) : input;
  const at::Tensor out = at::upsample_nearest2d(x, at::IntArrayRef(output_size));
  return upcast ? out.to(input.scalar_type()) : out;
}

Upsample2DImpl::Upsample2DImpl(const Upsample2DOptions& upsample, const at::TensorOptions& options)
    : options_(upsample) {
  Upsample2DOptions& o = options_;
  if (o.out_channels == 0) o.out_channels = o.channels;
  if (!o.use_conv && o.out_channels != o.channels)
    throw Error("Upsample2D: without a conv the channels cannot change (" + std::to_string(o.channels) + " -> " +
                std::to_string(o.out_channels) + ")");
  if (o.use_conv) conv = register_module("conv", Conv2d(o.channels, o.out_channels, 3, 1, 1, true, options));
}

at::Tensor Upsample2DImpl::forward(const at::Tensor& input, const std::vector<int64_t>& output_size) {
  at::Tensor hidden = output_size.empty() ? upsample_nearest_2x(input) : upsample_nearest(input, output_size);
  return options_.use_conv ? conv(hidden) : hidden;
}

}  // namespace diffuse
