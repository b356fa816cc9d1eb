#pragma once
// FLUX.1's denoiser, diffusers' FluxTransformer2DModel: packed latent tokens and T5 text tokens go
// through dual-stream blocks (own weights per stream, joint attention), then single-stream blocks
// over the concatenated sequence; the image tokens come out as the flow-matching velocity.
// Children carry diffusers' names, so a diffusers `transformer/` folder loads by name.

#include <ATen/ATen.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <filesystem>
#include <memory>

#include "diffuse/io/configs.hpp"
#include "diffuse/models/embeddings.hpp"
#include "diffuse/models/flux_blocks.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/normalization.hpp"
#include "diffuse/parallel/context_parallel_config.hpp"
#include "diffuse/placement/placeable_model.hpp"

namespace diffuse {

class Communicator;         // diffuse/distributed/communicator.hpp
class ContextParallelMesh;  // diffuse/parallel/context_parallel.hpp

// One call's inputs, as FluxPipeline passes them to diffusers' forward. Floating-point inputs should be
// in the model's dtype (hidden_states' dtype is the compute dtype) and on its device.
struct FluxTransformerInputs {
  at::Tensor hidden_states;          // [batch, image_seq, in_channels], packed latents
  at::Tensor encoder_hidden_states;  // [batch, text_seq, joint_attention_dim], T5 output
  at::Tensor pooled_projections;     // [batch, pooled_projection_dim], CLIP pooled output
  at::Tensor timestep;               // [batch], the scheduler's timestep / 1000 (the model multiplies by 1000)
  at::Tensor img_ids;                // [image_seq, 3] position ids (a leading batch dimension is dropped)
  at::Tensor txt_ids;                // [text_seq, 3]
  at::Tensor guidance;               // [batch] guidance scale, exactly when config.guidance_embeds; else undefined
};

// Its units, for placement: time_text_embed, context_embedder, x_embedder, transformer_blocks.N,
// single_transformer_blocks.N, norm_out, proj_out.
class FluxTransformer2DModelImpl : public torch::nn::Module, public PlaceableModel {
 public:
  using Config = FluxTransformerConfig;
  // Parameters are allocated uninitialized with `options`: load weights next (load_weights), or fill
  // them with init_random_parameters for a model without a checkpoint.
  FluxTransformer2DModelImpl(const FluxTransformerConfig& config, const at::TensorOptions& options);

  // -> [batch, image_seq, patch_size^2 * out_channels]. Throws diffuse::Error naming the input whose
  // shape does not fit the config.
  at::Tensor forward(const FluxTransformerInputs& inputs);

  // diffusers' fuse_qkv_projections(): every attention's to_q/to_k/to_v (and the dual blocks'
  // add_q/k/v_proj) run as one GEMM per stream, their weights re-laid end to end as views of one
  // storage (FluxAttentionImpl::fuse_qkv_projections: no second copy, names and values unchanged).
  // The pipeline calls it on CUDA before its denoising loop. Loading weights or moving the model
  // afterwards undoes it (forward then runs three products, with the same results); call it again
  // after. Returns whether every attention is now fused.
  bool fuse_qkv_projections();
  bool qkv_projections_fused() const;

  // The rotary embedding of the joint sequence [text, image], from their ids.
  RotaryEmbedding rotary_embedding(const at::Tensor& txt_ids, const at::Tensor& img_ids) const;

  const FluxTransformerConfig& config() const { return config_; }

  // Placement (placement/placeable_model.hpp).
  std::vector<std::string> unit_containers() const override;
  uint64_t activation_estimate() const override;

  // The kernel every attention of the model runs (diffusers' set_attention_backend): automatic picks
  // cuDNN or flash on CUDA and the math path elsewhere. A named backend that cannot run the inputs
  // fails at the first forward with a diffuse::Error naming it and why.
  void set_attention_backend(AttentionBackend backend) { attention_->backend = backend; }
  AttentionBackend attention_backend() const { return attention_->backend; }

  // Context parallelism: collective over `world` (every member calls it, with the same config). Then
  // forward is collective too: every rank passes the same full inputs, keeps its shard of the image
  // and text tokens (and their ids) for the blocks, attends through context_parallel_attention, and
  // gets the whole output back (gathered over the mesh). Ranks beyond config.degree() compute alone.
  // Throws diffuse::Error when the degrees do not fit the world or the Ulysses degree the heads.
  void enable_parallelism(const ContextParallelConfig& config, std::shared_ptr<Communicator> world);
  void disable_parallelism();
  // The mesh in use, or null.
  const std::shared_ptr<const ContextParallelMesh>& parallel_mesh() const { return mesh_; }

  CombinedTimestepTextProjEmbeddings time_text_embed{nullptr};
  Linear context_embedder{nullptr}, x_embedder{nullptr};
  torch::nn::ModuleList transformer_blocks{nullptr};         // FluxTransformerBlock x num_layers
  torch::nn::ModuleList single_transformer_blocks{nullptr};  // FluxSingleTransformerBlock x num_single_layers
  AdaLayerNormContinuous norm_out{nullptr};
  Linear proj_out{nullptr};

 private:
  void check_inputs(const FluxTransformerInputs& inputs) const;
  // forward on whatever tokens it is given (all of them, or this rank's shard).
  at::Tensor forward_tokens(const FluxTransformerInputs& inputs);
  FluxTransformerConfig config_;
  // Shared by every block's attention.
  std::shared_ptr<AttentionSettings> attention_ = std::make_shared<AttentionSettings>();
  std::shared_ptr<const ContextParallelMesh> mesh_;
};
TORCH_MODULE(FluxTransformer2DModel);

// Loads a diffusers `transformer/` folder: config.json and the safetensors weights (one file or shards),
// converted to `dtype` on `device`. Throws diffuse::Error naming the file, or the tensors that do not
// match the model.
FluxTransformer2DModel load_flux_transformer(const std::filesystem::path& folder, c10::ScalarType dtype,
                                             c10::Device device);

}  // namespace diffuse
