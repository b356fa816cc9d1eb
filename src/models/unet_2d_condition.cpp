#include "diffuse/models/unet_2d_condition.hpp"

#include <algorithm>
#include <sstream>

#include "diffuse/error.hpp"
#include "diffuse/models/weights.hpp"
#include "models/group_norm_nhwc.hpp"

namespace diffuse {
namespace {

std::string shape_text(const at::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

// The resnets of an up block: how many skip connections it takes.
size_t up_block_resnets(const torch::nn::Module& block) {
  if (const auto* cross = block.as<CrossAttnUpBlock2DImpl>()) return cross->resnets->size();
  return block.as<UpBlock2DImpl>()->resnets->size();
}

}  // namespace

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNet2DConditionConfig& config,
                                                   const at::TensorOptions& options)
    : config_(config) {
  config_.validate("UNet2DConditionModel config");
  const UNet2DConditionConfig& c = config_;
  const size_t n = c.num_blocks();
  const std::vector<int64_t>& channels = c.block_out_channels;
  const int64_t temb_channels = c.time_embed_dim();

  // Registered in the order forward runs them: placement takes the children as units in this order.
  time_proj = register_module("time_proj", Timesteps(channels[0], c.flip_sin_to_cos, c.freq_shift));
  time_embedding = register_module("time_embedding", TimestepEmbedding(channels[0], temb_channels, options, c.act_fn));
  conv_in = register_module(
      "conv_in", Conv2d(c.in_channels, channels[0], c.conv_in_kernel, 1, (c.conv_in_kernel - 1) / 2, true, options));

  const UNetBlockOptions common{.temb_channels = temb_channels,
                                .resnet_eps = c.norm_eps,
                                .resnet_act_fn = c.act_fn,
                                .resnet_groups = c.norm_num_groups,
                                .use_linear_projection = c.use_linear_projection,
                                .downsample_padding = c.downsample_padding};
  down_blocks = torch::nn::ModuleList();
  int64_t output_channel = channels[0];
  for (size_t i = 0; i < n; ++i) {
    UNetBlockOptions block = common;
    block.in_channels = output_channel;
    block.out_channels = output_channel = channels[i];
    block.num_layers = c.layers_per_block[i];
    block.transformer_layers = c.transformer_layers_per_block[i];
    block.output_scale_factor = c.resnet_out_scale_factor;
    block.num_attention_heads = c.num_attention_heads[i];
    block.cross_attention_dim = c.cross_attention_dim[i];
    block.add_downsample = i + 1 < n;
    if (c.down_block_types[i] == "CrossAttnDownBlock2D")
      down_blocks->push_back(CrossAttnDownBlock2D(block, options));
    else
      down_blocks->push_back(DownBlock2D(block, options));
  }
  register_module("down_blocks", down_blocks);

  UNetBlockOptions middle = common;
  middle.in_channels = middle.out_channels = channels.back();
  middle.transformer_layers = c.transformer_layers_per_block.back();
  middle.output_scale_factor = c.mid_block_scale_factor;
  middle.num_attention_heads = c.num_attention_heads.back();
  middle.cross_attention_dim = c.cross_attention_dim.back();
  mid_block = register_module("mid_block", UNetMidBlock2DCrossAttn(middle, options));

  // Up block i mirrors down block n-1-i: its per-block settings are the down blocks' reversed.
  up_blocks = torch::nn::ModuleList();
  output_channel = channels.back();
  for (size_t i = 0; i < n; ++i) {
    const size_t mirror = n - 1 - i;
    UNetBlockOptions block = common;
    block.prev_output_channel = output_channel;
    block.out_channels = output_channel = channels[mirror];
    block.in_channels = channels[mirror == 0 ? 0 : mirror - 1];  // the down block below's input width
    block.num_layers = c.layers_per_block[mirror] + 1;
    block.transformer_layers = c.transformer_layers_per_block[mirror];
    block.output_scale_factor = c.resnet_out_scale_factor;
    block.num_attention_heads = c.num_attention_heads[mirror];
    block.cross_attention_dim = c.cross_attention_dim[mirror];
    block.add_upsample = i + 1 < n;
    if (c.up_block_types[i] == "CrossAttnUpBlock2D")
      up_blocks->push_back(CrossAttnUpBlock2D(block, options));
    else
      up_blocks->push_back(UpBlock2D(block, options));
  }
  register_module("up_blocks", up_blocks);

  conv_norm_out =
      register_module("conv_norm_out", GroupNorm(c.norm_num_groups, channels[0], c.norm_eps, /*affine=*/true, options));
  conv_out = register_module("conv_out", Conv2d(channels[0], c.out_channels, c.conv_out_kernel, 1,
                                                (c.conv_out_kernel - 1) / 2, true, options));
}

void UNet2DConditionModelImpl::check_inputs(const at::Tensor& sample, const at::Tensor& timestep,
                                            const at::Tensor& encoder_hidden_states) const {
  auto fail = [](const std::string& what) { throw Error("UNet2DConditionModel: " + what); };
  if (!sample.defined() || !timestep.defined() || !encoder_hidden_states.defined())
    fail("sample, timestep and encoder_hidden_states are all required");
  const auto& c = config_;
  if (sample.dim() != 4 || sample.size(1) != c.in_channels || sample.size(2) == 0 || sample.size(3) == 0)
    fail("sample must be [batch, " + std::to_string(c.in_channels) + ", height, width], got " + shape_text(sample));
  const int64_t batch = sample.size(0);
  if (timestep.dim() > 1 || (timestep.dim() == 1 && timestep.size(0) != 1 && timestep.size(0) != batch))
    fail("timestep must be a scalar, [1] or [" + std::to_string(batch) + "], got " + shape_text(timestep));
  // Every transformer reads the same encoder_hidden_states, so their widths must all be this one.
  const int64_t width = c.cross_attention_dim.back();
  const bool one_width =
      std::all_of(c.cross_attention_dim.begin(), c.cross_attention_dim.end(), [&](int64_t d) { return d == width; });
  const at::Tensor& e = encoder_hidden_states;
  if (e.dim() != 3 || e.size(0) != batch || (one_width && e.size(2) != width))
    fail("encoder_hidden_states must be [" + std::to_string(batch) + ", tokens, " +
         (one_width ? std::to_string(width) : std::string("cross_attention_dim")) + "], got " + shape_text(e));
}

at::Tensor UNet2DConditionModelImpl::forward(const at::Tensor& sample, const at::Tensor& timestep,
                                             const at::Tensor& encoder_hidden_states) {
  check_inputs(sample, timestep, encoder_hidden_states);
  const at::Tensor& context = encoder_hidden_states;
  const int64_t batch = sample.size(0);
  // A latent that is not a multiple of 2^upsamplers was halved with rounding up somewhere; the
  // upsamplers then interpolate to their skip connection's size instead of doubling.
  const int64_t factor = int64_t{1} << num_upsamplers();
  const bool forward_upsample_size = sample.size(2) % factor != 0 || sample.size(3) % factor != 0;

  at::Tensor x = config_.center_input_sample ? sample * 2 - 1.0 : sample;
  // On CUDA in half precision the maps stay channels-last from conv_in to conv_out: cuDNN's NHWC
  // convolutions are the fast ones there, and our GroupNorm kernels keep that layout (PyTorch's would
  // copy to NCHW and back at every norm).
  x = channels_last_where_fused(x);

  // 1. time: the sinusoids in float32 (time_proj has no weights), then the MLP in the model's dtype.
  at::Tensor timesteps = timestep.dim() == 0 ? timestep.reshape({1}) : timestep;
  timesteps = timesteps.to(sample.device()).expand({batch});
  const at::Tensor t_emb = forward_unit(*time_proj, timesteps).to(sample.scalar_type());
  const at::Tensor emb = forward_unit(*time_embedding, t_emb);

  // 2. down, keeping every map the up blocks take back.
  x = forward_unit(*conv_in, x);
  std::vector<at::Tensor> skips{x};
  for (const auto& block : *down_blocks) {
    DownBlockOutput out = run_unit(
        *block,
        [&block](const at::Tensor& h, const at::Tensor& temb, const at::Tensor& e) {
          if (auto* cross = block->as<CrossAttnDownBlock2DImpl>()) return cross->forward(h, temb, e);
          return block->as<DownBlock2DImpl>()->forward(h, temb);
        },
        x, emb, context);
    x = out.hidden_states;
    skips.insert(skips.end(), out.res_samples.begin(), out.res_samples.end());
  }

  // 3. middle
  x = forward_unit(*mid_block, x, emb, context);

  // 4. up: each block takes as many skips as it has resnets, from the end.
  for (size_t i = 0; i < up_blocks->size(); ++i) {
    const auto& block = up_blocks[i];
    const size_t taken = up_block_resnets(*block);
    if (taken > skips.size()) throw Error("UNet2DConditionModel: the up blocks take more skip connections than exist");
    const std::vector<at::Tensor> res_samples(skips.end() - static_cast<std::ptrdiff_t>(taken), skips.end());
    skips.resize(skips.size() - taken);
    std::vector<int64_t> upsample_size;
    if (i + 1 < up_blocks->size() && forward_upsample_size && !skips.empty())
      upsample_size = {skips.back().size(2), skips.back().size(3)};
    x = run_unit(
        *block,
        [&block, &upsample_size](const at::Tensor& h, const std::vector<at::Tensor>& res, const at::Tensor& temb,
                                 const at::Tensor& e) {
          if (auto* cross = block->as<CrossAttnUpBlock2DImpl>()) return cross->forward(h, res, temb, e, upsample_size);
          return block->as<UpBlock2DImpl>()->forward(h, res, temb, upsample_size);
        },
        x, res_samples, emb, context);
  }

  // 5. out
  x = run_unit(*conv_norm_out, [this](const at::Tensor& h) { return conv_norm_out->forward_then(h, config_.act_fn); }, x);
  x = forward_unit(*conv_out, x);
  return x.contiguous();  // callers get the usual layout (a no-op where it already is)
}

void UNet2DConditionModelImpl::set_attention_backend(AttentionBackend backend) {
  attention_backend_ = backend;
  for (const auto& module : modules(/*include_self=*/false))
    if (auto* attention = module->as<AttentionImpl>()) attention->backend = backend;
}

std::vector<std::string> UNet2DConditionModelImpl::unit_containers() const { return {"", "down_blocks", "up_blocks"}; }

uint64_t UNet2DConditionModelImpl::activation_estimate() const {
  // SD's usual call: 512x512 images, so 64x64 latents, a batch of 2 (classifier-free guidance).
  const uint64_t batch = 2, side = 64;
  const auto& channels = config_.block_out_channels;
  const uint64_t c0 = static_cast<uint64_t>(channels[0]);
  // The widest unit, a cross-attention block at full resolution: per token the GEGLU projection
  // (8 c0) and its gated half (4 c0), q/k/v, the attention output and the residual stream (~6 c0), the
  // resnet maps with the concatenated skip (~6 c0). Fused attention keeps no scores; the math path
  // (CPU) adds batch * heads * tokens^2 float32 scores on top, which a CPU has room for.
  const uint64_t peak = batch * side * side * c0 * 24;
  // The skip connections, alive from their down block until their up block: conv_in's output, each
  // down resnet's, and each downsampler's.
  uint64_t skips = side * side * c0;
  uint64_t size = side;
  for (size_t i = 0; i < channels.size(); ++i) {
    skips += static_cast<uint64_t>(config_.layers_per_block[i]) * size * size * static_cast<uint64_t>(channels[i]);
    if (i + 1 < channels.size()) {
      size = (size + 1) / 2;
      skips += size * size * static_cast<uint64_t>(channels[i]);
    }
  }
  return (peak + batch * skips) * weight_element_bytes(*this);
}

UNet2DConditionModel load_unet_2d_condition(const std::filesystem::path& folder, c10::ScalarType dtype,
                                            c10::Device device) {
  return load_pretrained<UNet2DConditionModel, UNet2DConditionConfig>(folder, {.dtype = dtype, .device = device});
}

}  // namespace diffuse
