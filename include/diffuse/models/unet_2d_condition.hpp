#pragma once
// Stable Diffusion's denoiser, diffusers' UNet2DConditionModel as SD 1.x and 2.x configure it: the
// timestep's sinusoids and MLP give one embedding every resnet adds; conv_in, down blocks that halve
// the latent and keep skip connections, a cross-attention middle block, up blocks that double it back
// and take the skips, then group norm, activation and conv_out give the noise prediction. Cross-attention
// in every transformer reads the text encoder's last_hidden_state. Children carry diffusers' names, so a
// diffusers `unet/` folder loads by name.
//
//   auto unet = load_unet_2d_condition(pipeline_folder / "unet", at::kHalf, at::kCUDA);
//   at::Tensor noise = unet->forward(latents, timestep, prompt_embeds);   // [B, 4, h, w]

#include <ATen/ATen.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <filesystem>
#include <string>
#include <vector>

#include "diffuse/models/attention_backend.hpp"
#include "diffuse/models/embeddings.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/unet_2d_blocks.hpp"
#include "diffuse/models/unet_2d_condition_config.hpp"
#include "diffuse/placement/placeable_model.hpp"

namespace diffuse {

// Its units, for placement, in the order forward runs them: time_proj (no weights), time_embedding,
// conv_in, down_blocks.N, mid_block, up_blocks.N, conv_norm_out, conv_out. The skip connections cross
// from down_blocks.N to up_blocks.M as unit inputs, so the hooks move them where the up block runs.
class UNet2DConditionModelImpl : public torch::nn::Module, public PlaceableModel {
 public:
  using Config = UNet2DConditionConfig;
  // Parameters are allocated uninitialized with `options`: load weights next (load_weights), or fill
  // them with init_random_parameters. Throws diffuse::Error for a config that does not validate.
  UNet2DConditionModelImpl(const UNet2DConditionConfig& config, const at::TensorOptions& options);

  // sample [B, in_channels, h, w] in the model's dtype; timestep a scalar, [1] or [B] (any dtype: the
  // sinusoids are computed in float32 from it, then cast to the sample's dtype, as diffusers does);
  // encoder_hidden_states [B, tokens, cross_attention_dim]. Returns [B, out_channels, h, w].
  // Any h and w: when they are not multiples of 2^(levels - 1), the upsamplers are told the skip
  // connections' sizes (diffusers' forward_upsample_size). Throws diffuse::Error naming a bad input.
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timestep, const at::Tensor& encoder_hidden_states);

  const UNet2DConditionConfig& config() const { return config_; }
  // How many levels double the latent on the way up (levels - 1).
  int64_t num_upsamplers() const { return static_cast<int64_t>(config_.num_blocks()) - 1; }

  // The kernel every attention of the model runs (models/attention_backend.hpp): automatic picks cuDNN
  // or flash on CUDA (head sizes up to 256: SD 1.5's 160-channel heads go to flash) and the math path
  // elsewhere. A named backend that cannot run the inputs fails at the first forward, naming it and why.
  void set_attention_backend(AttentionBackend backend);
  AttentionBackend attention_backend() const { return attention_backend_; }

  // Placement (placement/placeable_model.hpp).
  std::vector<std::string> unit_containers() const override;
  uint64_t activation_estimate() const override;

  Timesteps time_proj{nullptr};
  TimestepEmbedding time_embedding{nullptr};
  Conv2d conv_in{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};  // CrossAttnDownBlock2D or DownBlock2D
  UNetMidBlock2DCrossAttn mid_block{nullptr};
  torch::nn::ModuleList up_blocks{nullptr};  // UpBlock2D or CrossAttnUpBlock2D
  GroupNorm conv_norm_out{nullptr};
  Conv2d conv_out{nullptr};

 private:
  void check_inputs(const at::Tensor& sample, const at::Tensor& timestep,
                    const at::Tensor& encoder_hidden_states) const;
  UNet2DConditionConfig config_;
  AttentionBackend attention_backend_ = AttentionBackend::automatic;
};
TORCH_MODULE(UNet2DConditionModel);

// Loads a diffusers `unet/` folder: config.json and the safetensors weights (one file or shards),
// converted to `dtype` on `device`. Throws diffuse::Error naming the file and key for a config it cannot
// build (or a layer count its weights do not hold), or the tensors that do not match the model.
// With a device map: load_model<UNet2DConditionModel>(folder, {...}) (placement/load_model.hpp).
UNet2DConditionModel load_unet_2d_condition(const std::filesystem::path& folder, c10::ScalarType dtype = at::kFloat,
                                            c10::Device device = at::kCPU);

}  // namespace diffuse
