#pragma once
// Qwen-Image's denoiser, diffusers' QwenImageTransformer2DModel: packed latent tokens (img_in) and
// Qwen2.5-VL text features (txt_norm, an RMSNorm, then txt_in) go through dual-stream blocks (own
// weights per stream, one joint attention over [text, image]); the image tokens come out through
// norm_out (AdaLayerNormContinuous) and proj_out as the flow-matching velocity. The only conditioning
// vector is the timestep's embedding; positions are QwenEmbedRope's (qwenimage_rope.hpp).
// Children carry diffusers' names, so a diffusers `transformer/` folder loads by name:
//
//   auto transformer = load_model<QwenImageTransformer2DModel>(dir / "transformer",
//                                                              {.dtype = at::kBFloat16, .device_map = "auto"});
//   at::Tensor velocity = transformer->forward(latents, prompt_embeds, prompt_embeds_mask, t / 1000,
//                                              {{{1, height / 16, width / 16}}});

#include <ATen/ATen.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <vector>

#include "diffuse/models/flux_blocks.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/normalization.hpp"
#include "diffuse/models/qwenimage_blocks.hpp"
#include "diffuse/models/qwenimage_call_tables.hpp"
#include "diffuse/models/qwenimage_rope.hpp"
#include "diffuse/models/qwenimage_transformer_config.hpp"
#include "diffuse/parallel/context_parallel_config.hpp"
#include "diffuse/placement/placeable_model.hpp"

namespace diffuse {

class Communicator;         // diffuse/distributed/communicator.hpp
class ContextParallelMesh;  // diffuse/parallel/context_parallel.hpp

// One call's inputs, as QwenImagePipeline passes them to diffusers' forward. Floating-point inputs
// should be in the model's dtype (hidden_states' dtype is the compute dtype) and on its device.
struct QwenImageTransformerInputs {
  at::Tensor hidden_states;          // [batch, image_seq, in_channels], packed latents
  at::Tensor encoder_hidden_states;  // [batch, text_seq, joint_attention_dim], the prompt embeddings
  // [batch, text_seq]: nonzero (true) for real text tokens, zero for padding, any pattern; undefined
  // when every token is real (diffusers' pipeline passes None then). On any device; it is read on the
  // host, so one on the CPU costs no synchronization (and keeps the call capturable in a CUDA graph).
  at::Tensor encoder_hidden_states_mask;
  // [batch], the scheduler's timestep / 1000 (the model's sinusoids scale it back by 1000). As in
  // diffusers it is first cast to the compute dtype.
  at::Tensor timestep;
  // Per batch item, its images in token order, in packed-latent tokens: text-to-image passes one
  // (1, latent_height / 2, latent_width / 2) per item. Their tokens must add up to image_seq, and every
  // item must have the same list: the rotary embedding is one for the batch (diffusers warns and uses
  // the first item's, which is wrong for the others; here that is an error).
  std::vector<std::vector<QwenImageShape>> img_shapes;
};

// Its units, for placement: time_text_embed, txt_norm, img_in, txt_in, transformer_blocks.N, norm_out,
// proj_out.
class QwenImageTransformer2DModelImpl : public torch::nn::Module, public PlaceableModel {
 public:
  using Config = QwenImageTransformerConfig;
  // Parameters are allocated uninitialized with `options`: load weights next (load_model), or fill
  // them with init_random_parameters for a model without a checkpoint.
  QwenImageTransformer2DModelImpl(const QwenImageTransformerConfig& config, const at::TensorOptions& options);

  // -> [batch, image_seq, patch_size^2 * out_channels], in hidden_states' dtype. Throws diffuse::Error
  // naming the input that does not fit the config or the other inputs.
  at::Tensor forward(const QwenImageTransformerInputs& inputs);
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                     const at::Tensor& encoder_hidden_states_mask, const at::Tensor& timestep,
                     const std::vector<std::vector<QwenImageShape>>& img_shapes);

  const QwenImageTransformerConfig& config() const { return config_; }

  // What forward derives from the inputs' shapes and text mask (qwenimage_call_tables.hpp): the rotary
  // rows and the key padding, made on the first call with these image shapes, text length, device,
  // mask values and context-parallel shard, then kept on the model (the last few of each), so that a
  // later such call does no host work that reaches the device and can be captured in a CUDA graph.
  // Whoever keeps a graph over forward holds what this returns for the graph's inputs while the graph
  // lives (the model's cache may drop them). Throws as forward does for inputs that do not fit.
  QwenImageCallTables call_tables(const QwenImageTransformerInputs& inputs);

  // diffusers' fuse_qkv_projections(): every block's to_q/to_k/to_v and add_q/k/v_proj re-laid as views
  // of one storage per stream, so each runs as one GEMM (FluxAttentionImpl::fuse_qkv_projections: no
  // second copy of the weights, names and values unchanged). QwenImagePipeline calls it on CUDA before
  // its denoising loop. Returns false where some could not be fused (they keep three products).
  bool fuse_qkv_projections();
  bool qkv_projections_fused() const;

  // Placement (placement/placeable_model.hpp).
  std::vector<std::string> unit_containers() const override;
  uint64_t activation_estimate() const override;

  // The kernel every attention of the model runs (diffusers' set_attention_backend): automatic picks
  // cuDNN or flash on CUDA and the math path elsewhere. With padded text each batch item attends to its
  // own keys (models/key_padding.hpp), on the same kernels.
  void set_attention_backend(AttentionBackend backend) { attention_->backend = backend; }
  AttentionBackend attention_backend() const { return attention_->backend; }

  // Context parallelism (diffusers' _cp_plan for this model): collective over `world` (every member
  // calls it, with the same config). Then forward is collective too: every rank passes the same full
  // inputs and keeps its shard of the image tokens, the text tokens, their rotary rows and the text mask
  // (any token counts: uneven shards); attention goes through context_parallel_attention (ring,
  // Ulysses or both) and every rank gets the whole output back (gathered over the mesh). Ranks beyond
  // config.degree() compute alone. Throws diffuse::Error when the degrees do not fit the world or the
  // Ulysses degree the heads.
  void enable_parallelism(const ContextParallelConfig& config, std::shared_ptr<Communicator> world);
  void disable_parallelism();
  // The mesh in use, or null.
  const std::shared_ptr<const ContextParallelMesh>& parallel_mesh() const { return mesh_; }

  QwenTimestepProjEmbeddings time_text_embed{nullptr};
  RMSNorm txt_norm{nullptr};
  Linear img_in{nullptr}, txt_in{nullptr};
  torch::nn::ModuleList transformer_blocks{nullptr};  // QwenImageTransformerBlock x num_layers
  AdaLayerNormContinuous norm_out{nullptr};
  Linear proj_out{nullptr};

 private:
  void check_inputs(const QwenImageTransformerInputs& inputs) const;
  // call_tables on checked inputs.
  QwenImageCallTables tables_for(const QwenImageTransformerInputs& inputs);
  // forward on whatever tokens it is given (all of them, or this rank's shard), with their rotary rows.
  at::Tensor forward_tokens(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                            const at::Tensor& timestep, const RotaryEmbedding& rotary);
  QwenImageTransformerConfig config_;
  // Shared by every block's attention.
  std::shared_ptr<AttentionSettings> attention_ = std::make_shared<AttentionSettings>();
  std::shared_ptr<const ContextParallelMesh> mesh_;
  QwenImageCallTableCache call_tables_;
};
TORCH_MODULE(QwenImageTransformer2DModel);

}  // namespace diffuse
