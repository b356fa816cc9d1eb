#include "diffuse/models/qwenimage_transformer.hpp"

#include <sstream>
#include <string>

#include "diffuse/error.hpp"
#include "diffuse/parallel/context_parallel.hpp"
#include "diffuse/parallel/sequence_shards.hpp"

namespace diffuse {
namespace {

std::string shape_text(const at::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

std::string shapes_text(const std::vector<QwenImageShape>& shapes) {
  std::string out = "[";
  for (const QwenImageShape& s : shapes)
    out += std::string(out.size() > 1 ? ", " : "") + "(" + std::to_string(s.frames) + ", " + std::to_string(s.height) +
           ", " + std::to_string(s.width) + ")";
  return out + "]";
}

// Shard `index` of the rows of a rotary embedding, as take_shard cuts the tokens they belong to.
RotaryEmbedding take_rows(const RotaryEmbedding& rotary, int64_t parts, int64_t index) {
  return {take_shard(rotary.cos, 0, parts, index), take_shard(rotary.sin, 0, parts, index),
          take_shard(rotary.phasor, 0, parts, index)};
}

// Clears the attention's per-call state however the call ends.
struct ClearKeyPaddingAfter {
  AttentionSettings& settings;
  ~ClearKeyPaddingAfter() { settings.key_padding = KeyPadding(); }
};

}  // namespace

// A block's rotary embedding follows it to its device (found by run_unit through argument-dependent lookup).
static RotaryEmbedding to_unit_device(const RotaryEmbedding& rotary, c10::Device device) {
  auto move = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  return {move(rotary.cos), move(rotary.sin), move(rotary.phasor)};
}

QwenImageTransformer2DModelImpl::QwenImageTransformer2DModelImpl(const QwenImageTransformerConfig& config,
                                                                 const at::TensorOptions& options)
    : config_(config) {
  const int64_t dim = config.inner_dim();
  time_text_embed = register_module("time_text_embed", QwenTimestepProjEmbeddings(dim, options));
  txt_norm = register_module("txt_norm", RMSNorm(config.joint_attention_dim, 1e-6, /*elementwise_affine=*/true, options));
  img_in = register_module("img_in", Linear(config.in_channels, dim, /*bias=*/true, options));
  txt_in = register_module("txt_in", Linear(config.joint_attention_dim, dim, /*bias=*/true, options));
  transformer_blocks = torch::nn::ModuleList();
  for (int64_t i = 0; i < config.num_layers; ++i) {
    QwenImageTransformerBlock block(dim, config.num_attention_heads, config.attention_head_dim, options);
    block->attn->settings = attention_;
    transformer_blocks->push_back(block);
  }
  register_module("transformer_blocks", transformer_blocks);
  norm_out = register_module("norm_out", AdaLayerNormContinuous(dim, dim, /*elementwise_affine=*/false, 1e-6, options));
  proj_out = register_module("proj_out", Linear(dim, config.output_channels(), /*bias=*/true, options));
}

void QwenImageTransformer2DModelImpl::check_inputs(const QwenImageTransformerInputs& in) const {
  auto fail = [](const std::string& what) { throw Error("QwenImageTransformer2DModel: " + what); };
  auto require = [&](const at::Tensor& t, const char* name) {
    if (!t.defined()) fail(std::string(name) + " is required");
  };
  require(in.hidden_states, "hidden_states");
  require(in.encoder_hidden_states, "encoder_hidden_states");
  require(in.timestep, "timestep");
  const auto& c = config_;
  const at::Tensor& x = in.hidden_states;
  if (x.dim() != 3 || x.size(2) != c.in_channels)
    fail("hidden_states must be [batch, image_seq, " + std::to_string(c.in_channels) + "], got " + shape_text(x));
  if (!at::isFloatingType(x.scalar_type()))
    fail(std::string("hidden_states must be floating point, got ") + c10::toString(x.scalar_type()));
  const int64_t batch = x.size(0);
  const at::Tensor& e = in.encoder_hidden_states;
  if (e.dim() != 3 || e.size(0) != batch || e.size(2) != c.joint_attention_dim)
    fail("encoder_hidden_states must be [" + std::to_string(batch) + ", text_seq, " +
         std::to_string(c.joint_attention_dim) + "], got " + shape_text(e));
  const at::Tensor& mask = in.encoder_hidden_states_mask;
  if (mask.defined() && (mask.dim() != 2 || mask.size(0) != batch || mask.size(1) != e.size(1)))
    fail("encoder_hidden_states_mask must be [" + std::to_string(batch) + ", " + std::to_string(e.size(1)) +
         "] (batch, text_seq), got " + shape_text(mask));
  if (in.timestep.dim() != 1 || in.timestep.size(0) != batch)
    fail("timestep must be [" + std::to_string(batch) + "], got " + shape_text(in.timestep));
  if (static_cast<int64_t>(in.img_shapes.size()) != batch)
    fail("img_shapes has " + std::to_string(in.img_shapes.size()) + " entries for a batch of " +
         std::to_string(batch));
  const std::vector<QwenImageShape>& first = in.img_shapes.front();
  int64_t tokens = 0;
  for (const QwenImageShape& s : first) {
    if (s.frames <= 0 || s.height <= 0 || s.width <= 0)
      fail("img_shapes " + shapes_text(first) + " has a size that is not positive");
    tokens += s.tokens();
  }
  if (first.empty() || tokens != x.size(1))
    fail("img_shapes " + shapes_text(first) + " make " + std::to_string(tokens) +
         " image tokens, but hidden_states has " + std::to_string(x.size(1)));
  for (size_t i = 1; i < in.img_shapes.size(); ++i)
    if (in.img_shapes[i] != first)
      fail("img_shapes differ between batch items (" + shapes_text(first) + " and " + shapes_text(in.img_shapes[i]) +
           "): the rotary embedding is one for the whole batch");
}

at::Tensor QwenImageTransformer2DModelImpl::forward(const at::Tensor& hidden_states,
                                                    const at::Tensor& encoder_hidden_states,
                                                    const at::Tensor& encoder_hidden_states_mask,
                                                    const at::Tensor& timestep,
                                                    const std::vector<std::vector<QwenImageShape>>& img_shapes) {
  return forward(QwenImageTransformerInputs{hidden_states, encoder_hidden_states, encoder_hidden_states_mask,
                                            timestep, img_shapes});
}

void QwenImageTransformer2DModelImpl::enable_parallelism(const ContextParallelConfig& config,
                                                         std::shared_ptr<Communicator> world) {
  mesh_ = std::make_shared<const ContextParallelMesh>(std::move(world), config, config_.num_attention_heads);
  attention_->mesh = mesh_->active() ? mesh_ : nullptr;
}

void QwenImageTransformer2DModelImpl::disable_parallelism() {
  mesh_.reset();
  attention_->mesh.reset();
  attention_->mesh_lengths.clear();
}

QwenImageCallTables QwenImageTransformer2DModelImpl::call_tables(const QwenImageTransformerInputs& in) {
  check_inputs(in);
  return tables_for(in);
}

QwenImageCallTables QwenImageTransformer2DModelImpl::tables_for(const QwenImageTransformerInputs& in) {
  const int64_t batch = in.hidden_states.size(0);
  const int64_t image_len = in.hidden_states.size(1), text_len = in.encoder_hidden_states.size(1);
  const c10::Device device = in.hidden_states.device();
  const bool sharded = mesh_ && mesh_->active();
  const int64_t parts = sharded ? mesh_->degree() : 1, index = sharded ? mesh_->rank() : 0;
  QwenImageCallTables tables;
  // The rotary rows of the whole sequence (text positions follow the full text length, as diffusers
  // computes them before its _cp_plan splits them), then this rank's rows of each: made once per key.
  tables.rotary = call_tables_.rotary({in.img_shapes.front(), text_len, device, parts, index}, [&] {
    const QwenImageRotaryEmbedding rotary =
        qwenimage_rotary_embedding(in.img_shapes.front(), text_len, config_.axes_dims_rope, device);
    if (!sharded) return joint_rotary_embedding(rotary);
    return joint_rotary_embedding({.image = take_rows(rotary.image, parts, index),
                                   .text = take_rows(rotary.text, parts, index)});
  });
  if (!in.encoder_hidden_states_mask.defined()) return tables;
  // diffusers' joint mask: the text mask, then every image token valid. Built on the host (a mask on
  // the CPU costs no device synchronization here); the cache finds its padding by its values.
  const at::Tensor text_mask = in.encoder_hidden_states_mask.to(at::kCPU).to(at::kBool);
  auto joint_mask = [&](const at::Tensor& text, int64_t image_tokens) {
    return at::cat({text, at::ones({batch, image_tokens}, text.options())}, 1);
  };
  if (!sharded) {
    tables.key_padding = call_tables_.key_padding(joint_mask(text_mask, image_len));
    return tables;
  }
  // Every rank's part of the mask, in mesh-rank order: attention sees every rank's keys.
  const std::vector<int64_t> image_shards = shard_sizes(image_len, parts);
  std::vector<at::Tensor> mesh_mask;
  for (int64_t i = 0; i < parts; ++i)
    mesh_mask.push_back(joint_mask(take_shard(text_mask, 1, parts, i), image_shards[static_cast<size_t>(i)]));
  tables.key_padding = call_tables_.key_padding(at::cat(mesh_mask, 1));
  return tables;
}

at::Tensor QwenImageTransformer2DModelImpl::forward(const QwenImageTransformerInputs& in) {
  check_inputs(in);
  const ClearKeyPaddingAfter clear{*attention_};
  // After the first call with these shapes and mask, no host work reaches the device from here on:
  // a CUDA graph can capture the call (models/graph_call.hpp).
  const QwenImageCallTables tables = tables_for(in);
  attention_->key_padding = tables.key_padding;
  if (!mesh_ || !mesh_->active())
    return forward_tokens(in.hidden_states, in.encoder_hidden_states, in.timestep, tables.rotary);
  // Each rank keeps one contiguous shard of the image tokens and one of the text tokens (any counts),
  // with their rotary rows; attention is the only place tokens meet, and it sees every rank's keys
  // (and, with padded text, every rank's part of the mask, in mesh-rank order).
  const int64_t image_len = in.hidden_states.size(1), text_len = in.encoder_hidden_states.size(1);
  const int64_t parts = mesh_->degree(), index = mesh_->rank();
  const std::vector<int64_t> image_shards = shard_sizes(image_len, parts);
  const std::vector<int64_t> text_shards = shard_sizes(text_len, parts);
  attention_->mesh_lengths.clear();
  for (size_t i = 0; i < static_cast<size_t>(parts); ++i)
    attention_->mesh_lengths.push_back(text_shards[i] + image_shards[i]);
  const at::Tensor out = forward_tokens(take_shard(in.hidden_states, 1, parts, index),
                                        take_shard(in.encoder_hidden_states, 1, parts, index), in.timestep,
                                        tables.rotary);
  return mesh_->group().all_gather(out.contiguous(), 1, image_shards);
}

at::Tensor QwenImageTransformer2DModelImpl::forward_tokens(const at::Tensor& image, const at::Tensor& text,
                                                           const at::Tensor& t, const RotaryEmbedding& rotary) {
  // Each unit runs through forward_unit, so that a device map's hooks can place it (a plain call without).
  const c10::ScalarType dtype = image.scalar_type();
  at::Tensor hidden_states = forward_unit(*img_in, image);
  // As diffusers: t / 1000 is cast to the compute dtype, then its sinusoids are taken in float32.
  const at::Tensor timestep = t.to(dtype);
  const at::Tensor temb = run_unit(
      *time_text_embed, [&](const at::Tensor& step) { return time_text_embed->forward(step, dtype); }, timestep);
  at::Tensor encoder_hidden_states = forward_unit(*txt_in, forward_unit(*txt_norm, text));

  for (const auto& block : *transformer_blocks) {
    QwenImageBlockOutput out = forward_unit(*block->as<QwenImageTransformerBlockImpl>(), hidden_states,
                                            encoder_hidden_states, temb, rotary);
    hidden_states = out.hidden_states;
    encoder_hidden_states = out.encoder_hidden_states;
  }
  return forward_unit(*proj_out, forward_unit(*norm_out, hidden_states, temb));
}

bool QwenImageTransformer2DModelImpl::fuse_qkv_projections() { return fuse_qkv_projections_in(*this); }

bool QwenImageTransformer2DModelImpl::qkv_projections_fused() const { return qkv_projections_fused_in(*this); }

std::vector<std::string> QwenImageTransformer2DModelImpl::unit_containers() const { return {"", "transformer_blocks"}; }

uint64_t QwenImageTransformer2DModelImpl::activation_estimate() const {
  // At 1024x1024 (4096 image tokens) with 512 text tokens a block holds about 20 rows of inner_dim per
  // token at its peak: the 4x MLP activations before and after GELU, q/k/v, the attention output, the
  // modulated inputs and the residual streams.
  const uint64_t tokens = 512 + 4096;
  return tokens * static_cast<uint64_t>(config_.inner_dim()) * 20 * weight_element_bytes(*this);
}

}  // namespace diffuse
