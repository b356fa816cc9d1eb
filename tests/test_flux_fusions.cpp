// The FLUX transformer's fused paths give what the plain ones give: the single-stream block on views of
// one joint sequence (no concatenation), proj_out as two accumulating products (no concatenation of
// attention and MLP), and q/k/v as one product over weights re-laid end to end (fuse_qkv_projections),
// with its fallback when something replaces a parameter's data afterwards.

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "diffuse/models/embeddings.hpp"
#include "diffuse/models/flux_blocks.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/layers.hpp"
#include "support/test_support.hpp"

using namespace diffuse;

namespace {

constexpr int64_t kHeads = 2, kHeadDim = 16, kDim = kHeads * kHeadDim;
const std::vector<int64_t> kAxes = {4, 6, 6};  // sums to kHeadDim

RotaryEmbedding rotary_for(int64_t tokens, const c10::Device& device = at::kCPU) {
  at::manual_seed(5);
  const at::Tensor ids = at::randint(0, 16, {tokens, 3}, at::TensorOptions(device).dtype(at::kFloat));
  return flux_pos_embed(ids, kAxes);
}

// What FluxSingleTransformerBlock computed before it lost its concatenations (diffusers' forward).
FluxBlockOutput single_block_with_concatenations(FluxSingleTransformerBlockImpl& block, const at::Tensor& image,
                                                 const at::Tensor& text, const at::Tensor& temb,
                                                 const RotaryEmbedding& rotary) {
  const at::Tensor residual = at::cat({text, image}, 1);
  AdaLayerNormZeroSingleOutput normed = block.norm(residual, temb);
  const at::Tensor mlp = linear_gelu_tanh(*block.proj_mlp, normed.hidden_states);
  const at::Tensor attention = block.attn(normed.hidden_states, at::Tensor(), rotary).hidden_states;
  const at::Tensor x =
      clip_float16(at::addcmul(residual, normed.gate.unsqueeze(1), block.proj_out(at::cat({attention, mlp}, 2))));
  return {x.narrow(1, 0, text.size(1)), x.narrow(1, text.size(1), x.size(1) - text.size(1))};
}

FluxTransformerConfig tiny_config() {
  FluxTransformerConfig config;
  config.in_channels = config.out_channels = 8;
  config.num_layers = 2;
  config.num_single_layers = 2;
  config.attention_head_dim = kHeadDim;
  config.num_attention_heads = kHeads;
  config.joint_attention_dim = 12;
  config.pooled_projection_dim = 10;
  config.guidance_embeds = true;
  config.axes_dims_rope = kAxes;
  return config;
}

FluxTransformerInputs tiny_inputs(const c10::Device& device, c10::ScalarType dtype) {
  at::manual_seed(7);
  const at::TensorOptions options = at::TensorOptions(device).dtype(dtype);
  const int64_t image = 16, text = 5;
  return {.hidden_states = at::randn({2, image, 8}, options),
          .encoder_hidden_states = at::randn({2, text, 12}, options),
          .pooled_projections = at::randn({2, 10}, options),
          .timestep = at::full({2}, 0.7, options.dtype(at::kFloat)),
          .img_ids = at::randint(0, 8, {image, 3}, options),
          .txt_ids = at::zeros({text, 3}, options),
          .guidance = at::full({2}, 3.5, options.dtype(at::kFloat))};
}

std::map<std::string, at::Tensor> parameter_copies(torch::nn::Module& module) {
  std::map<std::string, at::Tensor> copies;
  for (const auto& item : module.named_parameters()) copies[item.key()] = item.value().clone();
  return copies;
}

}  // namespace

// The single block on views of one joint tensor (as the blocks hand each other their outputs) must
// give bitwise what it gives on separate tensors, and what the concatenating form gave (proj_out as
// two accumulating products: the same sum split in two, float32 rounding apart). An empty text shard
// (a context-parallel rank's) included.
TEST(FluxSingleBlock, JointViewsSeparateTensorsAndTheConcatenatingFormAgree) {
  at::NoGradGuard no_grad;
  FluxSingleTransformerBlock block(kDim, kHeads, kHeadDim, at::TensorOptions(at::kFloat));
  init_random_parameters(*block, 3);
  for (const int64_t text_len : {int64_t{5}, int64_t{0}}) {
    SCOPED_TRACE("text tokens: " + std::to_string(text_len));
    const int64_t image_len = 11;
    at::manual_seed(1);
    const at::Tensor joint = at::randn({2, text_len + image_len, kDim});
    const at::Tensor temb = at::randn({2, kDim});
    const RotaryEmbedding rotary = rotary_for(text_len + image_len);
    const at::Tensor text_view = joint.narrow(1, 0, text_len), image_view = joint.narrow(1, text_len, image_len);
    const at::Tensor text = text_view.clone(), image = image_view.clone();

    const FluxBlockOutput on_views = block(image_view, text_view, temb, rotary);
    const FluxBlockOutput on_copies = block(image, text, temb, rotary);
    EXPECT_TRUE(at::equal(on_views.hidden_states, on_copies.hidden_states));
    EXPECT_TRUE(at::equal(on_views.encoder_hidden_states, on_copies.encoder_hidden_states));
    // The outputs are again views of one tensor, for the next block.
    EXPECT_EQ(on_views.encoder_hidden_states.data_ptr<float>() + text_len * kDim,
              on_views.hidden_states.data_ptr<float>());

    const FluxBlockOutput before = single_block_with_concatenations(*block, image, text, temb, rotary);
    test::print_error("single block: split proj_out vs concatenated", on_copies.hidden_states, before.hidden_states);
    EXPECT_TENSORS_CLOSE(on_copies.hidden_states, before.hidden_states, 1e-6);
    if (text_len > 0) EXPECT_TENSORS_CLOSE(on_copies.encoder_hidden_states, before.encoder_hidden_states, 1e-6);
  }
}

// Views that only look alike (another tensor, or a gap between the streams) are concatenated as before.
TEST(FluxSingleBlock, StreamsThatAreNotAdjacentAreConcatenated) {
  at::NoGradGuard no_grad;
  FluxSingleTransformerBlock block(kDim, kHeads, kHeadDim, at::TensorOptions(at::kFloat));
  init_random_parameters(*block, 4);
  at::manual_seed(2);
  const at::Tensor whole = at::randn({1, 4 + 1 + 6, kDim});
  const at::Tensor text = whole.narrow(1, 0, 4), image = whole.narrow(1, 5, 6);  // one token between them
  const at::Tensor temb = at::randn({1, kDim});
  const RotaryEmbedding rotary = rotary_for(10);
  const FluxBlockOutput gapped = block(image, text, temb, rotary);
  const FluxBlockOutput separate = block(image.clone(), text.clone(), temb, rotary);
  EXPECT_TRUE(at::equal(gapped.hidden_states, separate.hidden_states));
  EXPECT_TRUE(at::equal(gapped.encoder_hidden_states, separate.encoder_hidden_states));
}

// fuse_qkv_projections: the same outputs (one product over the joint weight instead of three), the
// same parameter names and values, the three weights now views of one storage; and forward falls
// back to three products when a parameter's data is replaced afterwards (as loading or offload do).
TEST(FluxTransformerFusedQkv, SameOutputsNamesAndValuesAndFallsBackWhenMoved) {
  at::NoGradGuard no_grad;
  const c10::Device device = test::test_device();
  FluxTransformer2DModel model(tiny_config(), at::TensorOptions(at::kFloat).device(device));
  init_random_parameters(*model, 9);
  const FluxTransformerInputs inputs = tiny_inputs(device, at::kFloat);
  const at::Tensor plain = model->forward(inputs);
  const std::map<std::string, at::Tensor> before = parameter_copies(*model);
  EXPECT_FALSE(model->qkv_projections_fused());

  ASSERT_TRUE(model->fuse_qkv_projections());
  EXPECT_TRUE(model->qkv_projections_fused());
  const std::map<std::string, at::Tensor> after = parameter_copies(*model);
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [name, value] : before) {
    ASSERT_EQ(after.count(name), 1u) << name;
    EXPECT_TRUE(at::equal(after.at(name), value)) << name;
  }
  auto& attn = *model->transformer_blocks[0]->as<FluxTransformerBlockImpl>()->attn;
  EXPECT_TRUE(attn.to_q->weight.is_alias_of(attn.to_v->weight));
  EXPECT_TRUE(attn.add_k_proj->bias.is_alias_of(attn.add_q_proj->bias));
  EXPECT_FALSE(attn.to_q->weight.is_alias_of(attn.add_q_proj->weight));  // one joint weight per stream
  EXPECT_TRUE(model->fuse_qkv_projections());  // already fused: nothing changes
  EXPECT_TRUE(attn.to_q->weight.is_alias_of(attn.to_v->weight));

  // The same sums on the CPU; cuBLAS may pick another kernel (summation order) for the wider product.
  const double tolerance = device.is_cuda() ? 1e-5 : 1e-6;
  const at::Tensor fused = model->forward(inputs);
  test::print_error("transformer: fused q/k/v vs three products", fused, plain);
  EXPECT_TENSORS_CLOSE(fused, plain, tolerance);

  // A parameter given other data, as weights.cpp and the offload hooks do: three products again.
  attn.to_k->weight.set_data(attn.to_k->weight.clone());
  EXPECT_FALSE(attn.qkv_projections_fused());
  EXPECT_FALSE(model->qkv_projections_fused());
  const at::Tensor fallback = model->forward(inputs);
  EXPECT_TENSORS_CLOSE(fallback, plain, tolerance);
  // The whole model moved (every parameter set_data'd to a copy): none fused, same result.
  model->to(at::kDouble);
  model->to(at::kFloat);
  auto& single = *model->single_transformer_blocks[1]->as<FluxSingleTransformerBlockImpl>()->attn;
  EXPECT_FALSE(single.qkv_projections_fused());
  EXPECT_TENSORS_CLOSE(model->forward(inputs), plain, tolerance);
  // And fusing again works.
  EXPECT_TRUE(model->fuse_qkv_projections());
  EXPECT_TENSORS_CLOSE(model->forward(inputs), plain, tolerance);
}

// Layers that cannot share one storage are left alone.
TEST(FluxTransformerFusedQkv, RefusesLayersOfDifferentDtypes) {
  at::NoGradGuard no_grad;
  FluxAttention attention(kDim, kHeads, kHeadDim, /*added_kv=*/false, at::TensorOptions(at::kFloat));
  init_random_parameters(*attention, 1);
  attention->to_v->weight.set_data(attention->to_v->weight.to(at::kDouble));
  EXPECT_FALSE(attention->fuse_qkv_projections());
  EXPECT_FALSE(attention->to_q->weight.is_alias_of(attention->to_k->weight));
}

// On CUDA in bfloat16 with FLUX.1's head_dim: the fused kernel reads q and k as column slices of the
// joint [tokens, 3 * inner] output (a token stride of 3 * inner), and the transformer replayed with
// fused projections agrees with the unfused one within bfloat16 rounding.
TEST(FluxTransformerFusedQkv, OnCudaTheFusedKernelReadsColumnSlices) {
  const c10::Device device = test::test_device();
  if (!device.is_cuda()) GTEST_SKIP() << "the fused q/k kernel runs on CUDA (DIFFUSE_TEST_DEVICE=cuda)";
  at::NoGradGuard no_grad;
  const int64_t heads = 4, head_dim = 128, dim = heads * head_dim;
  for (bool dual : {true, false}) {
    SCOPED_TRACE(dual ? "dual-stream" : "single-stream");
    FluxAttention attention(dim, heads, head_dim, dual, at::TensorOptions(at::kFloat).device(device));
    init_random_parameters(*attention, 12);
    attention->to(at::kBFloat16);
    at::manual_seed(3);
    const at::TensorOptions options = at::TensorOptions(device).dtype(at::kBFloat16);
    const at::Tensor image = at::randn({2, 37, dim}, options);
    const at::Tensor text = dual ? at::randn({2, 9, dim}, options) : at::Tensor();
    const int64_t total = 37 + (dual ? 9 : 0);
    const at::Tensor ids = at::randint(0, 64, {total, 3}, at::TensorOptions(device).dtype(at::kFloat));
    const RotaryEmbedding rotary = flux_pos_embed(ids, {16, 56, 56});
    const FluxAttentionOutput plain = attention(image, text, rotary);
    ASSERT_TRUE(attention->fuse_qkv_projections());
    const FluxAttentionOutput fused = attention(image, text, rotary);
    test::print_error("attention: fused q/k/v vs three products (bf16)", fused.hidden_states, plain.hidden_states);
    EXPECT_TENSORS_CLOSE(fused.hidden_states, plain.hidden_states, 1e-2);
    if (dual) EXPECT_TENSORS_CLOSE(fused.encoder_hidden_states, plain.encoder_hidden_states, 1e-2);
  }
}
