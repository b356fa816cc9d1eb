// What Qwen-Image's transformer keeps between calls so that a CUDA graph can capture it
// (models/qwenimage_call_tables.hpp): the cache gives back what a fresh computation gives, one entry per
// key (image shapes, text length, device, shard; mask values) and no more than its capacity; forward
// through the cache is the uncached forward, bit for bit, as shapes, text lengths and masks change; and
// on CUDA the forward replays from a CUDA graph with the eager result (the CUDA case runs with
// DIFFUSE_TEST_DEVICE=cuda on the GPU machine and skips elsewhere, saying so).

#include <ATen/ATen.h>

#include "diffuse/error.hpp"
#include "diffuse/models/graph_call.hpp"
#include "diffuse/models/key_padding.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/qwenimage_call_tables.hpp"
#include "diffuse/models/qwenimage_rope.hpp"
#include "diffuse/models/qwenimage_transformer.hpp"
#include "support/test_support.hpp"

using namespace diffuse;

namespace {

// tiny-qwenimage's transformer layout (4 heads of 16 channels, rotary axes 8/4/4), random weights.
QwenImageTransformerConfig tiny_config() {
  QwenImageTransformerConfig c;
  c.in_channels = 16;
  c.out_channels = 4;
  c.num_layers = 2;
  c.attention_head_dim = 16;
  c.num_attention_heads = 4;
  c.joint_attention_dim = 32;
  c.axes_dims_rope = {8, 4, 4};
  return c;
}

// A model with weights seeded by `seed`: two models of one seed are the same model, with separate caches.
QwenImageTransformer2DModel tiny_model(c10::Device device, uint64_t seed = 7) {
  QwenImageTransformer2DModel model(tiny_config(), at::TensorOptions(at::kFloat));
  init_random_parameters(*model, seed);
  model->to(device);
  return model;
}

// One call's inputs: a (1, height, width) image, `text_len` text tokens, and item 1's text padded from
// `valid` tokens on when valid < text_len (batch 2; no mask when every token is valid).
QwenImageTransformerInputs inputs(int64_t height, int64_t width, int64_t text_len, int64_t valid, c10::Device device,
                                  uint64_t seed = 1) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  const QwenImageTransformerConfig c = tiny_config();
  QwenImageTransformerInputs in;
  in.hidden_states = at::randn({2, height * width, c.in_channels}, g).to(device);
  in.encoder_hidden_states = at::randn({2, text_len, c.joint_attention_dim}, g).to(device);
  in.timestep = at::tensor({0.25f, 0.75f}).to(device);
  in.img_shapes = {{QwenImageShape{1, height, width}}, {QwenImageShape{1, height, width}}};
  if (valid < text_len) {
    in.encoder_hidden_states_mask = at::ones({2, text_len}, at::kLong);
    in.encoder_hidden_states_mask[1].narrow(0, valid, text_len - valid).zero_();
  }
  return in;
}

RotaryEmbedding fresh_rotary(const QwenImageTransformerInputs& in, c10::Device device) {
  return joint_rotary_embedding(qwenimage_rotary_embedding(in.img_shapes.front(), in.encoder_hidden_states.size(1),
                                                           tiny_config().axes_dims_rope, device));
}

void expect_same_rotary(const RotaryEmbedding& a, const RotaryEmbedding& b) {
  EXPECT_TRUE(at::equal(a.cos, b.cos));
  EXPECT_TRUE(at::equal(a.sin, b.sin));
  EXPECT_TRUE(at::equal(a.phasor, b.phasor));
}

}  // namespace

TEST(QwenImageCallTableCache, BuildsARotaryTableOncePerKeyAndKeepsTheLastFew) {
  QwenImageCallTableCache cache;
  int builds = 0;
  auto table = [&](int64_t rows) {
    return [&builds, rows] {
      ++builds;
      return RotaryEmbedding{at::full({rows, 4}, static_cast<double>(rows)), at::Tensor(), at::Tensor()};
    };
  };
  const QwenImageRotaryKey key{{{1, 2, 3}}, 5, c10::kCPU, 1, 0};
  const RotaryEmbedding first = cache.rotary(key, table(11));
  const RotaryEmbedding again = cache.rotary(key, table(12));
  EXPECT_EQ(builds, 1);
  EXPECT_EQ(again.cos.data_ptr(), first.cos.data_ptr());  // the kept tensors themselves

  // Each part of the key is a key of its own.
  QwenImageRotaryKey other_text = key, other_shape = key, other_shard = key;
  other_text.text_len = 6;
  other_shape.shapes = {{1, 3, 2}};
  other_shard.parts = 2;
  EXPECT_EQ(cache.rotary(other_text, table(21)).cos.size(0), 21);
  EXPECT_EQ(cache.rotary(other_shape, table(22)).cos.size(0), 22);
  EXPECT_EQ(cache.rotary(other_shard, table(23)).cos.size(0), 23);
  EXPECT_EQ(builds, 4);
  EXPECT_EQ(cache.rotary_entries(), 4u);

  // Past the capacity the least recently used goes: `key` was used last before the others, so
  // touching it keeps it, and other_text goes instead.
  EXPECT_EQ(cache.rotary(key, table(13)).cos.data_ptr(), first.cos.data_ptr());
  QwenImageRotaryKey fifth = key;
  fifth.index = 1;
  cache.rotary(fifth, table(24));
  EXPECT_EQ(cache.rotary_entries(), QwenImageCallTableCache::kCapacity);
  EXPECT_EQ(builds, 5);
  EXPECT_EQ(cache.rotary(key, table(14)).cos.data_ptr(), first.cos.data_ptr());
  EXPECT_EQ(cache.rotary(other_text, table(25)).cos.size(0), 25);  // made again
  EXPECT_EQ(builds, 6);
  // What a caller holds stays whole when its entry goes.
  EXPECT_TRUE(at::equal(first.cos, at::full({11, 4}, 11.0)));
}

TEST(QwenImageCallTableCache, FindsKeyPaddingByTheMasksValues) {
  QwenImageCallTableCache cache;
  at::Tensor mask = at::ones({2, 6}, at::kBool);
  mask[1].narrow(0, 4, 2).fill_(false);
  const KeyPadding padding = cache.key_padding(mask);
  ASSERT_TRUE(padding.any());
  EXPECT_TRUE(at::equal(padding.kept(1), at::arange(4, at::kLong)));
  // An equal mask in another tensor finds it; the caller changing its tensor afterwards does not.
  EXPECT_EQ(cache.key_padding(mask.clone()).mask().data_ptr(), padding.mask().data_ptr());
  mask[0][0] = false;
  const KeyPadding changed = cache.key_padding(mask);
  EXPECT_NE(changed.mask().data_ptr(), padding.mask().data_ptr());
  EXPECT_TRUE(at::equal(changed.kept(0), at::arange(1, 6, at::kLong)));
  EXPECT_TRUE(at::equal(padding.mask()[0], at::ones({6}, at::kBool)));
  // Another shape with a prefix of the same values is another mask.
  EXPECT_EQ(cache.key_padding(at::ones({2, 5}, at::kBool)).keys(), 5);
  EXPECT_EQ(cache.key_padding_entries(), 3u);
  for (int64_t n = 1; n <= 4; ++n) cache.key_padding(at::ones({1, n}, at::kBool));
  EXPECT_EQ(cache.key_padding_entries(), QwenImageCallTableCache::kCapacity);

  EXPECT_ERROR_CONTAINS(cache.key_padding(at::ones({2, 6}, at::kLong)), "bool on the CPU");
}

// The tables forward reads are the ones computed fresh, made once per key, and belong to their key.
TEST(QwenImageCallTables, AreTheFreshTablesMadeOncePerKey) {
  const c10::Device device = test::test_device();
  QwenImageTransformer2DModel model = tiny_model(device);
  const QwenImageTransformerInputs padded = inputs(4, 6, 7, 3, device);
  const QwenImageCallTables first = model->call_tables(padded);
  expect_same_rotary(first.rotary, fresh_rotary(padded, device));
  EXPECT_EQ(first.rotary.cos.device(), device);
  const KeyPadding fresh_padding(at::cat({padded.encoder_hidden_states_mask, at::ones({2, 24}, at::kLong)}, 1));
  ASSERT_TRUE(first.key_padding.any());
  EXPECT_TRUE(at::equal(first.key_padding.mask(), fresh_padding.mask()));
  EXPECT_FALSE(first.key_padding.kept(0).defined());
  EXPECT_TRUE(at::equal(first.key_padding.kept(1), fresh_padding.kept(1)));

  // Kept: the second call gets the same tensors, whatever the values of the latents and timestep.
  const QwenImageCallTables second = model->call_tables(inputs(4, 6, 7, 3, device, /*seed=*/2));
  EXPECT_EQ(second.rotary.cos.data_ptr(), first.rotary.cos.data_ptr());
  EXPECT_EQ(second.rotary.phasor.data_ptr(), first.rotary.phasor.data_ptr());
  EXPECT_EQ(second.key_padding.mask().data_ptr(), first.key_padding.mask().data_ptr());

  // Another image size or text length gets its own rows; no mask, no padding.
  for (const QwenImageTransformerInputs& other : {inputs(6, 4, 7, 7, device), inputs(4, 6, 5, 5, device)}) {
    const QwenImageCallTables tables = model->call_tables(other);
    expect_same_rotary(tables.rotary, fresh_rotary(other, device));
    EXPECT_FALSE(tables.key_padding.any());
  }
  // The mask on the device reads the same as on the CPU.
  QwenImageTransformerInputs on_device = padded;
  on_device.encoder_hidden_states_mask = padded.encoder_hidden_states_mask.to(device);
  EXPECT_EQ(model->call_tables(on_device).key_padding.mask().data_ptr(), first.key_padding.mask().data_ptr());
  // Inputs that do not fit are named, as forward names them.
  QwenImageTransformerInputs bad = padded;
  bad.img_shapes = {{QwenImageShape{1, 5, 6}}, {QwenImageShape{1, 5, 6}}};
  EXPECT_ERROR_CONTAINS(model->call_tables(bad), "img_shapes");
}

// Calls of changing image size, text length and mask each give what a model that never saw the others
// gives, bit for bit: the cache never hands one call's tables to another.
TEST(QwenImageCallTables, ForwardThroughTheCacheIsTheUncachedForward) {
  const c10::Device device = test::test_device();
  QwenImageTransformer2DModel model = tiny_model(device);
  at::NoGradGuard no_grad;
  QwenImageTransformerInputs other_mask = inputs(4, 6, 7, 3, device);
  other_mask.encoder_hidden_states_mask[1].fill_(1);
  other_mask.encoder_hidden_states_mask[0].narrow(0, 5, 2).zero_();
  const std::vector<QwenImageTransformerInputs> calls = {
      inputs(4, 6, 7, 3, device),  // padded text
      inputs(6, 4, 5, 5, device),  // another image size (the same token count) and text length, no mask
      other_mask,                  // the first call's shapes, another mask
      inputs(2, 2, 9, 9, device),  // fewer tokens
      inputs(4, 6, 7, 3, device),  // the first call again
      inputs(4, 6, 7, 7, device),  // its shapes without a mask
  };
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i < calls.size(); ++i) {
    outs.push_back(model->forward(calls[i]));
    const at::Tensor uncached = tiny_model(device)->forward(calls[i]);
    EXPECT_TRUE(at::equal(outs.back(), uncached)) << "call " << i << ": max difference "
                                                  << (outs.back() - uncached).abs().max().item<double>();
  }
  EXPECT_TRUE(at::equal(outs[4], outs[0]));
  // The cases differ, so a table handed to the wrong call would have shown.
  EXPECT_FALSE(at::equal(outs[2], outs[0]));
  EXPECT_FALSE(at::equal(outs[5], outs[0]));
  EXPECT_FALSE(at::equal(outs[1], outs[0]));
}

// The pipeline's use: each pass its own CudaGraphCall over forward, its tables held. On CUDA the second
// call of each replays a graph and gives the eager result bit for bit; a failed capture (some host
// work left in forward) would leave replayed() false.
TEST(QwenImageCallTables, ForwardReplaysFromACudaGraph) {
  const c10::Device device = test::test_device();
  if (!device.is_cuda() || !CudaGraphCall::supported())
    GTEST_SKIP() << "CUDA graphs need a CUDA build and DIFFUSE_TEST_DEVICE=cuda (device here: " << device.str()
                 << "); run this on the GPU machine";
  QwenImageTransformer2DModel model = tiny_model(device);
  at::NoGradGuard no_grad;
  for (const QwenImageTransformerInputs& base : {inputs(4, 6, 7, 3, device), inputs(6, 4, 5, 5, device)}) {
    SCOPED_TRACE(base.encoder_hidden_states_mask.defined() ? "padded text" : "no mask");
    const QwenImageCallTables held = model->call_tables(base);
    CudaGraphCall call([&](const std::vector<at::Tensor>& in) {
      QwenImageTransformerInputs step = base;
      step.hidden_states = in[0];
      step.timestep = in[1];
      return model->forward(step);
    });
    for (uint64_t seed = 1; seed <= 3; ++seed) {
      const int64_t text_len = base.encoder_hidden_states.size(1);
      const QwenImageTransformerInputs step =
          inputs(base.img_shapes[0][0].height, base.img_shapes[0][0].width, text_len, text_len, device, seed);
      const at::Tensor timestep = at::full({2}, 0.1 * static_cast<double>(seed), step.hidden_states.options());
      const at::Tensor out = call({step.hidden_states, timestep});
      EXPECT_EQ(call.replayed(), seed > 1) << "call " << seed;
      QwenImageTransformerInputs eager = base;
      eager.hidden_states = step.hidden_states;
      eager.timestep = timestep;
      const at::Tensor expected = model->forward(eager);
      EXPECT_TRUE(at::equal(out, expected)) << "call " << seed << ": max difference "
                                            << (out - expected).abs().max().item<double>();
    }
  }
}
