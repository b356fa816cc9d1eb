#include "diffuse/models/qwenimage_vae_blocks.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "diffuse/error.hpp"
#include "diffuse/models/sampling.hpp"

namespace diffuse::qwenimage_vae {
namespace {

// F.normalize's default epsilon: the norm is clamped to at least this before dividing.
constexpr double kNormalizeEps = 1e-12;

using Size3 = std::array<int64_t, 3>;  // (time, height, width)

bool half_precision(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

void check_video(const at::Tensor& x, const char* what) {
  if (x.dim() != 5)
    throw Error(std::string("AutoencoderKLQwenImage ") + what +
                ": expected [batch, channels, frames, height, width], got " + c10::str(x.sizes()));
}

// softmax(q k^T / sqrt(C)) v for q, k, v [N, 1, L, C]. On the math path the queries run in slices
// (rows of the score matrix are independent, so the result is the same) to bound its memory.
at::Tensor single_head_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 AttentionBackend backend, int64_t max_scores) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const int64_t q_len = q.size(2);
  const int64_t rows =
      std::max<int64_t>(1, std::max<int64_t>(1, max_scores) / std::max<int64_t>(1, q.size(0) * k.size(2)));
  if (q_len <= rows || resolve_attention_backend(backend, q) != AttentionBackend::math)
    return attention(q, k, v, scale, backend);
  std::vector<at::Tensor> slices;
  for (int64_t start = 0; start < q_len; start += rows)
    slices.push_back(attention(q.narrow(2, start, std::min(rows, q_len - start)), k, v, scale, backend));
  return at::cat(slices, 2);
}

// SiLU over a temporary that nothing else holds, in place: the same values, one map less.
at::Tensor silu_in_place(at::Tensor x) {
  at::silu_(x);
  return x;
}

ResampleImpl::Mode upsample_mode(bool temporal) {
  return temporal ? ResampleImpl::Mode::upsample3d : ResampleImpl::Mode::upsample2d;
}

}  // namespace

CausalConv3dImpl::CausalConv3dImpl(int64_t in_channels, int64_t out_channels, std::array<int64_t, 3> kernel,
                                   std::array<int64_t, 3> stride, std::array<int64_t, 3> padding,
                                   const at::TensorOptions& options)
    : kernel_(kernel), stride_(stride), padding_(padding) {
  weight = register_parameter("weight",
                              at::empty({out_channels, in_channels, kernel[0], kernel[1], kernel[2]}, options), false);
  bias = register_parameter("bias", at::empty({out_channels}, options), false);
}

at::Tensor CausalConv3dImpl::forward(const at::Tensor& x) {
  check_video(x, "causal convolution");
  // One frame behind kt - 1 zero frames: only the kernel's last time tap meets data, so the 3D
  // convolution is a 2D one with that slice of the kernel (the same sums, a third of the work, and no
  // padded copy of the input).
  if (x.size(2) == 1 && stride_[0] == 1 && 2 * padding_[0] == kernel_[0] - 1) {
    const at::Tensor out = at::conv2d(x.select(2, 0), weight.select(2, kernel_[0] - 1), bias, {stride_[1], stride_[2]},
                                      {padding_[1], padding_[2]});
    return out.unsqueeze(2);
  }
  // (w left, w right, h top, h bottom, t front, t back): time padded on the left only.
  const at::Tensor padded =
      at::constant_pad_nd(x, {padding_[2], padding_[2], padding_[1], padding_[1], 2 * padding_[0], 0}, 0);
  return at::conv3d(padded, weight, bias, {stride_[0], stride_[1], stride_[2]});
}

RMSNormImpl::RMSNormImpl(int64_t dim, bool images, const at::TensorOptions& options)
    : scale_(std::sqrt(static_cast<double>(dim))) {
  const std::vector<int64_t> shape = images ? std::vector<int64_t>{dim, 1, 1} : std::vector<int64_t>{dim, 1, 1, 1};
  gamma = register_parameter("gamma", at::empty(shape, options), false);
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  // F.normalize(x, dim=1) = x / max(||x||, eps), computed in float32 for half-precision inputs and then
  // rounded to x's dtype once, as diffusers' x.float() ... .to(x.dtype) does. div_out computes in the
  // promoted float32 and writes x's dtype, without a float32 copy of x on CUDA.
  const int64_t channel_dim[] = {1};
  const bool upcast = half_precision(x);
  const at::Tensor norm = at::linalg_vector_norm(x, 2, at::IntArrayRef(channel_dim), /*keepdim=*/true,
                                                 upcast ? c10::optional<at::ScalarType>(at::kFloat) : c10::nullopt)
                              .clamp_min(kNormalizeEps);
  at::Tensor normalized = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::div_out(normalized, x, norm);
  // Then `normalized * scale * gamma` in x's dtype (the bias is 0.0 in every norm of this model).
  return normalized.mul_(scale_).mul_(gamma);
}

ResidualBlockImpl::ResidualBlockImpl(int64_t in_dim, int64_t out_dim, const at::TensorOptions& options) {
  norm1 = register_module("norm1", RMSNorm(in_dim, /*images=*/false, options));
  conv1 = register_module("conv1", CausalConv3d(in_dim, out_dim, 3, 1, options));
  norm2 = register_module("norm2", RMSNorm(out_dim, /*images=*/false, options));
  conv2 = register_module("conv2", CausalConv3d(out_dim, out_dim, 3, 1, options));
  if (in_dim != out_dim) conv_shortcut = register_module("conv_shortcut", CausalConv3d(in_dim, out_dim, 1, 0, options));
}

at::Tensor ResidualBlockImpl::forward(const at::Tensor& x) {
  const at::Tensor shortcut = conv_shortcut ? conv_shortcut(x) : x;
  // In place where the tensor is a fresh temporary: the same values, less memory at full resolution.
  at::Tensor h = conv1(silu_in_place(norm1(x)));
  h = conv2(silu_in_place(norm2(h)));  // dropout: identity at inference
  return h.add_(shortcut);
}

AttentionBlockImpl::AttentionBlockImpl(int64_t dim, const at::TensorOptions& options) {
  norm = register_module("norm", RMSNorm(dim, /*images=*/true, options));
  to_qkv = register_module("to_qkv", Conv2d(dim, dim * 3, 1, 1, 0, true, options));
  proj = register_module("proj", Conv2d(dim, dim, 1, 1, 0, true, options));
}

at::Tensor AttentionBlockImpl::forward(const at::Tensor& x) {
  check_video(x, "attention block");
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  // Frames become batch entries: [B * T, C, H, W].
  const at::Tensor frames = x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w});
  // [B*T, 3C, H, W] -> [B*T, 1, H*W, 3C]: one head, one token per position, then q | k | v on channels.
  const at::Tensor qkv = to_qkv(norm(frames)).reshape({b * t, 1, 3 * c, h * w}).permute({0, 1, 3, 2});
  // Each of q, k, v made contiguous: the fused kernels want aligned rows (a slice of 3C has stride 3C).
  const auto parts = qkv.chunk(3, /*dim=*/-1);
  const at::Tensor attended = single_head_attention(parts[0].contiguous(), parts[1].contiguous(), parts[2].contiguous(),
                                                    backend, max_scores_per_slice);
  const at::Tensor out = proj(attended.squeeze(1).permute({0, 2, 1}).reshape({b * t, c, h, w}));
  return out.view({b, t, c, h, w}).permute({0, 2, 1, 3, 4}) + x;
}

ResampleImpl::ResampleImpl(int64_t dim, Mode mode, const at::TensorOptions& options) : mode_(mode) {
  resample = register_module("resample", torch::nn::ModuleList());
  resample->push_back(NoParameters());  // QwenImageUpsample or ZeroPad2d
  const bool up = mode == Mode::upsample2d || mode == Mode::upsample3d;
  if (up)
    resample->push_back(Conv2d(dim, dim / 2, 3, /*stride=*/1, /*padding=*/1, true, options));
  else
    resample->push_back(Conv2d(dim, dim, 3, /*stride=*/2, /*padding=*/0, true, options));
  if (mode == Mode::upsample3d)
    time_conv = register_module("time_conv",
                                CausalConv3d(dim, dim * 2, Size3{3, 1, 1}, Size3{1, 1, 1}, Size3{1, 0, 0}, options));
  if (mode == Mode::downsample3d)
    time_conv =
        register_module("time_conv", CausalConv3d(dim, dim, Size3{3, 1, 1}, Size3{2, 1, 1}, Size3{0, 0, 0}, options));
}

at::Tensor ResampleImpl::forward(const at::Tensor& x) {
  check_video(x, "resample block");
  // First chunk: upsample3d only marks its cache ("Rep") and downsample3d only stores its input; the
  // time convolution starts with the second chunk. Every frame is then resampled spatially alone.
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  const at::Tensor frames = x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w});
  auto& conv = *resample[1]->as<Conv2dImpl>();
  at::Tensor out;
  if (mode_ == Mode::upsample2d || mode_ == Mode::upsample3d) {
    // nearest-exact at scale 2 picks source index floor(i / 2), as nearest does: a broadcast copy.
    out = conv.forward(upsample_nearest_2x(frames));
  } else {
    // ZeroPad2d((0, 1, 0, 1)): one zero column on the right, one zero row at the bottom.
    out = conv.forward(at::constant_pad_nd(frames, {0, 1, 0, 1}, 0));
  }
  return out.view({b, t, out.size(1), out.size(2), out.size(3)}).permute({0, 2, 1, 3, 4});
}

MidBlockImpl::MidBlockImpl(int64_t dim, const at::TensorOptions& options) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  resnets->push_back(ResidualBlock(dim, dim, options));
  attentions->push_back(AttentionBlock(dim, options));
  resnets->push_back(ResidualBlock(dim, dim, options));
}

at::Tensor MidBlockImpl::forward(const at::Tensor& x) {
  at::Tensor h = resnets[0]->as<ResidualBlockImpl>()->forward(x);
  for (size_t i = 0; i < attentions->size(); ++i) {
    h = attentions[i]->as<AttentionBlockImpl>()->forward(h);
    h = resnets[i + 1]->as<ResidualBlockImpl>()->forward(h);
  }
  return h;
}

UpBlockImpl::UpBlockImpl(int64_t in_dim, int64_t out_dim, int64_t num_res_blocks,
                         std::optional<ResampleImpl::Mode> upsample, const at::TensorOptions& options) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < num_res_blocks + 1; ++i)
    resnets->push_back(ResidualBlock(i == 0 ? in_dim : out_dim, out_dim, options));
  if (upsample) {
    upsamplers = register_module("upsamplers", torch::nn::ModuleList());
    upsamplers->push_back(Resample(out_dim, *upsample, options));
  }
}

at::Tensor UpBlockImpl::forward(const at::Tensor& x) {
  at::Tensor h = x;
  for (const auto& resnet : *resnets) h = resnet->as<ResidualBlockImpl>()->forward(h);
  if (upsamplers) h = upsamplers[0]->as<ResampleImpl>()->forward(h);
  return h;
}

Encoder3dImpl::Encoder3dImpl(const AutoencoderKLQwenImageConfig& config, const at::TensorOptions& options) {
  const auto& mult = config.dim_mult;
  std::vector<int64_t> dims = {config.base_dim};
  for (int64_t m : mult) dims.push_back(config.base_dim * m);

  conv_in = register_module("conv_in", CausalConv3d(config.input_channels, dims[0], 3, 1, options));
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  double scale = 1.0;
  for (size_t i = 0; i < mult.size(); ++i) {
    int64_t in_dim = dims[i];
    const int64_t out_dim = dims[i + 1];
    const bool attend =
        std::find(config.attn_scales.begin(), config.attn_scales.end(), scale) != config.attn_scales.end();
    for (int64_t r = 0; r < config.num_res_blocks; ++r) {
      down_blocks->push_back(ResidualBlock(in_dim, out_dim, options));
      if (attend) down_blocks->push_back(AttentionBlock(out_dim, options));
      in_dim = out_dim;
    }
    if (i + 1 != mult.size()) {
      down_blocks->push_back(Resample(
          out_dim, config.temperal_downsample[i] ? ResampleImpl::Mode::downsample3d : ResampleImpl::Mode::downsample2d,
          options));
      scale /= 2.0;
    }
  }
  mid_block = register_module("mid_block", MidBlock(dims.back(), options));
  norm_out = register_module("norm_out", RMSNorm(dims.back(), /*images=*/false, options));
  conv_out = register_module("conv_out", CausalConv3d(dims.back(), 2 * config.z_dim, 3, 1, options));
}

at::Tensor Encoder3dImpl::forward(const at::Tensor& images) {
  at::Tensor h = forward_unit(*conv_in, images);
  for (const auto& block : *down_blocks) h = forward_unit(*block->as<FrameBlock>(), h);
  h = forward_unit(*mid_block, h);
  h = silu_in_place(forward_unit(*norm_out, h));
  return forward_unit(*conv_out, h);
}

Decoder3dImpl::Decoder3dImpl(const AutoencoderKLQwenImageConfig& config, const at::TensorOptions& options) {
  const auto& mult = config.dim_mult;
  const size_t n = mult.size();
  // Widths from the deepest level up: [mult[-1]] + reversed(mult), times base_dim.
  std::vector<int64_t> dims = {config.base_dim * mult.back()};
  for (size_t i = 0; i < n; ++i) dims.push_back(config.base_dim * mult[n - 1 - i]);

  conv_in = register_module("conv_in", CausalConv3d(config.z_dim, dims[0], 3, 1, options));
  mid_block = register_module("mid_block", MidBlock(dims[0], options));
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  for (size_t i = 0; i < n; ++i) {
    // Every upsampler halves its channels, so each level after the first starts from half its width.
    const int64_t in_dim = i == 0 ? dims[0] : dims[i] / 2;
    std::optional<ResampleImpl::Mode> upsample;
    // temperal_upsample = temperal_downsample reversed.
    if (i + 1 != n) upsample = upsample_mode(config.temperal_downsample[n - 2 - i]);
    up_blocks->push_back(UpBlock(in_dim, dims[i + 1], config.num_res_blocks, upsample, options));
  }
  norm_out = register_module("norm_out", RMSNorm(dims.back(), /*images=*/false, options));
  conv_out = register_module("conv_out", CausalConv3d(dims.back(), config.input_channels, 3, 1, options));
}

at::Tensor Decoder3dImpl::forward(const at::Tensor& latents) {
  at::Tensor h = forward_unit(*conv_in, latents);
  h = forward_unit(*mid_block, h);
  for (const auto& block : *up_blocks) h = forward_unit(*block->as<UpBlockImpl>(), h);
  h = silu_in_place(forward_unit(*norm_out, h));
  return forward_unit(*conv_out, h);
}

void set_attention_backend(torch::nn::Module& module, AttentionBackend backend) {
  for (const auto& child : module.modules(/*include_self=*/false))
    if (auto* block = child->as<AttentionBlockImpl>()) block->backend = backend;
}

}  // namespace diffuse::qwenimage_vae
