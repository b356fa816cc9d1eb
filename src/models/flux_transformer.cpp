#include "diffuse/models/flux_transformer.hpp"

#include <sstream>
#include <string>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/models/weights.hpp"
#include "diffuse/parallel/context_parallel.hpp"
#include "diffuse/parallel/sequence_shards.hpp"

namespace diffuse {
namespace {

// FluxPosEmbed's theta.
constexpr double kRopeTheta = 10000.0;

std::string shape_text(const at::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

// diffusers accepts ids with a (deprecated) leading batch dimension and uses the first entry.
at::Tensor drop_batch(const at::Tensor& ids) { return ids.dim() == 3 ? ids.select(0, 0) : ids; }

}  // namespace

// A block's rotary embedding follows it to its device (found by run_unit through argument-dependent lookup).
static RotaryEmbedding to_unit_device(const RotaryEmbedding& rotary, c10::Device device) {
  return {rotary.cos.to(device), rotary.sin.to(device), rotary.phasor.defined() ? rotary.phasor.to(device) : at::Tensor()};
}

FluxTransformer2DModelImpl::FluxTransformer2DModelImpl(const FluxTransformerConfig& config,
                                                       const at::TensorOptions& options)
    : config_(config) {
  const int64_t dim = config.inner_dim();
  const int64_t heads = config.num_attention_heads, head_dim = config.attention_head_dim;
  time_text_embed = register_module(
      "time_text_embed",
      CombinedTimestepTextProjEmbeddings(dim, config.pooled_projection_dim, config.guidance_embeds, options));
  context_embedder = register_module("context_embedder", Linear(config.joint_attention_dim, dim, true, options));
  x_embedder = register_module("x_embedder", Linear(config.in_channels, dim, true, options));
  transformer_blocks = torch::nn::ModuleList();
  for (int64_t i = 0; i < config.num_layers; ++i)
    transformer_blocks->push_back(FluxTransformerBlock(dim, heads, head_dim, options));
  register_module("transformer_blocks", transformer_blocks);
  single_transformer_blocks = torch::nn::ModuleList();
  for (int64_t i = 0; i < config.num_single_layers; ++i)
    single_transformer_blocks->push_back(FluxSingleTransformerBlock(dim, heads, head_dim, options));
  register_module("single_transformer_blocks", single_transformer_blocks);
  for (const auto& block : *transformer_blocks) block->as<FluxTransformerBlockImpl>()->attn->settings = attention_;
  for (const auto& block : *single_transformer_blocks)
    block->as<FluxSingleTransformerBlockImpl>()->attn->settings = attention_;
  norm_out = register_module("norm_out", AdaLayerNormContinuous(dim, dim, /*elementwise_affine=*/false, 1e-6, options));
  const int64_t out = config.patch_size * config.patch_size * config.out_channels;
  proj_out = register_module("proj_out", Linear(dim, out, /*bias=*/true, options));
}

void FluxTransformer2DModelImpl::check_inputs(const FluxTransformerInputs& in) const {
  auto fail = [](const std::string& what) { throw Error("FluxTransformer2DModel: " + what); };
  auto require = [&](const at::Tensor& t, const char* name) {
    if (!t.defined()) fail(std::string(name) + " is required");
  };
  require(in.hidden_states, "hidden_states");
  require(in.encoder_hidden_states, "encoder_hidden_states");
  require(in.pooled_projections, "pooled_projections");
  require(in.timestep, "timestep");
  require(in.img_ids, "img_ids");
  require(in.txt_ids, "txt_ids");
  const auto& c = config_;
  const at::Tensor& x = in.hidden_states;
  if (x.dim() != 3 || x.size(2) != c.in_channels)
    fail("hidden_states must be [batch, image_seq, " + std::to_string(c.in_channels) + "], got " + shape_text(x));
  const int64_t batch = x.size(0);
  const at::Tensor& e = in.encoder_hidden_states;
  if (e.dim() != 3 || e.size(0) != batch || e.size(2) != c.joint_attention_dim)
    fail("encoder_hidden_states must be [" + std::to_string(batch) + ", text_seq, " +
         std::to_string(c.joint_attention_dim) + "], got " + shape_text(e));
  const at::Tensor& p = in.pooled_projections;
  if (p.dim() != 2 || p.size(0) != batch || p.size(1) != c.pooled_projection_dim)
    fail("pooled_projections must be [" + std::to_string(batch) + ", " + std::to_string(c.pooled_projection_dim) +
         "], got " + shape_text(p));
  if (in.timestep.dim() != 1 || in.timestep.size(0) != batch)
    fail("timestep must be [" + std::to_string(batch) + "], got " + shape_text(in.timestep));
  if (c.guidance_embeds && !in.guidance.defined())
    fail("guidance is required: the model embeds guidance (guidance_embeds = true)");
  if (!c.guidance_embeds && in.guidance.defined())
    fail("guidance was given but the model has no guidance embedder (guidance_embeds = false)");
  if (in.guidance.defined() && (in.guidance.dim() != 1 || in.guidance.size(0) != batch))
    fail("guidance must be [" + std::to_string(batch) + "], got " + shape_text(in.guidance));
  const auto axes = static_cast<int64_t>(c.axes_dims_rope.size());
  auto check_ids = [&](const at::Tensor& ids, const char* name, int64_t seq) {
    at::Tensor flat = drop_batch(ids);
    if (flat.dim() != 2 || flat.size(0) != seq || flat.size(1) != axes)
      fail(std::string(name) + " must be [" + std::to_string(seq) + ", " + std::to_string(axes) + "], got " +
           shape_text(ids));
  };
  check_ids(in.img_ids, "img_ids", x.size(1));
  check_ids(in.txt_ids, "txt_ids", e.size(1));
}

RotaryEmbedding FluxTransformer2DModelImpl::rotary_embedding(const at::Tensor& txt_ids,
                                                             const at::Tensor& img_ids) const {
  return flux_pos_embed(at::cat({drop_batch(txt_ids), drop_batch(img_ids)}, /*dim=*/0), config_.axes_dims_rope,
                        kRopeTheta);
}

bool FluxTransformer2DModelImpl::fuse_qkv_projections() { return fuse_qkv_projections_in(*this); }

bool FluxTransformer2DModelImpl::qkv_projections_fused() const { return qkv_projections_fused_in(*this); }

void FluxTransformer2DModelImpl::enable_parallelism(const ContextParallelConfig& config,
                                                    std::shared_ptr<Communicator> world) {
  mesh_ = std::make_shared<const ContextParallelMesh>(std::move(world), config, config_.num_attention_heads);
  attention_->mesh = mesh_->active() ? mesh_ : nullptr;
}

void FluxTransformer2DModelImpl::disable_parallelism() {
  mesh_.reset();
  attention_->mesh.reset();
  attention_->mesh_lengths.clear();
}

at::Tensor FluxTransformer2DModelImpl::forward(const FluxTransformerInputs& in) {
  check_inputs(in);
  if (!mesh_ || !mesh_->active()) return forward_tokens(in);
  // Each rank keeps one contiguous shard of the image tokens and one of the text tokens (any counts);
  // attention is the only place tokens meet, and it sees every rank's keys.
  const int64_t parts = mesh_->degree(), index = mesh_->rank();
  const std::vector<int64_t> image_shards = shard_sizes(in.hidden_states.size(1), parts);
  const std::vector<int64_t> text_shards = shard_sizes(in.encoder_hidden_states.size(1), parts);
  attention_->mesh_lengths.clear();
  for (int64_t i = 0; i < parts; ++i)
    attention_->mesh_lengths.push_back(text_shards[static_cast<size_t>(i)] + image_shards[static_cast<size_t>(i)]);
  FluxTransformerInputs local = in;
  local.hidden_states = take_shard(in.hidden_states, 1, parts, index);
  local.encoder_hidden_states = take_shard(in.encoder_hidden_states, 1, parts, index);
  local.img_ids = take_shard(drop_batch(in.img_ids), 0, parts, index);
  local.txt_ids = take_shard(drop_batch(in.txt_ids), 0, parts, index);
  at::Tensor out = forward_tokens(local);
  return mesh_->group().all_gather(out.contiguous(), 1, image_shards);
}

at::Tensor FluxTransformer2DModelImpl::forward_tokens(const FluxTransformerInputs& in) {
  // Each unit runs through forward_unit, so that a device map's hooks can place it (a plain call without).
  at::Tensor hidden_states = forward_unit(*x_embedder, in.hidden_states);
  // The pipeline passes t/1000. diffusers rounds it (and guidance) to the compute dtype before scaling
  // back up; in bfloat16 that turns guidance 3.5 into 3504/1000 and moves the whole output by ~3%.
  // Scaling in float32 keeps the sinusoids exact; they are cast to the compute dtype after.
  at::Tensor timestep = in.timestep.to(at::kFloat) * 1000;
  at::Tensor guidance = in.guidance.defined() ? in.guidance.to(at::kFloat) * 1000 : at::Tensor();
  at::Tensor temb = forward_unit(*time_text_embed, timestep, guidance, in.pooled_projections);
  at::Tensor encoder_hidden_states = forward_unit(*context_embedder, in.encoder_hidden_states);
  RotaryEmbedding rotary = rotary_embedding(in.txt_ids, in.img_ids);

  for (const auto& block : *transformer_blocks) {
    FluxBlockOutput out = forward_unit(*block->as<FluxTransformerBlockImpl>(), hidden_states,
                                       encoder_hidden_states, temb, rotary);
    hidden_states = out.hidden_states;
    encoder_hidden_states = out.encoder_hidden_states;
  }
  for (const auto& block : *single_transformer_blocks) {
    FluxBlockOutput out = forward_unit(*block->as<FluxSingleTransformerBlockImpl>(), hidden_states,
                                       encoder_hidden_states, temb, rotary);
    hidden_states = out.hidden_states;
    encoder_hidden_states = out.encoder_hidden_states;
  }
  return forward_unit(*proj_out, forward_unit(*norm_out, hidden_states, temb));
}

FluxTransformer2DModel load_flux_transformer(const std::filesystem::path& folder, c10::ScalarType dtype,
                                             c10::Device device) {
  return load_pretrained<FluxTransformer2DModel, FluxTransformerConfig>(folder, {.dtype = dtype, .device = device});
}

std::vector<std::string> FluxTransformer2DModelImpl::unit_containers() const {
  return {"", "transformer_blocks", "single_transformer_blocks"};
}

uint64_t FluxTransformer2DModelImpl::activation_estimate() const {
  // At 1024x1024 with 512 text tokens a single-stream block holds about 20 rows of inner_dim per token
  // at its peak: the 4x MLP activations before and after GELU, q/k/v, the attention output and the
  // concatenation fed to proj_out (no longer built, but the first single block still concatenates
  // the two streams, and the estimate errs on the side of room).
  const uint64_t tokens = 512 + 4096;
  return tokens * static_cast<uint64_t>(config_.inner_dim()) * 20 * weight_element_bytes(*this);
}

}  // namespace diffuse
