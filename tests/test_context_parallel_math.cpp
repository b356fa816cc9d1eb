// The pure parts of context parallelism: config checks (with CFG parallelism's cfg dimension),
// sequence shards of any length, and partial attention merged by log-sum-exp equal to attention over
// all keys at once.

#include "diffuse/error.hpp"
#include "diffuse/models/attention.hpp"
#include "diffuse/parallel/context_parallel_config.hpp"
#include "diffuse/parallel/parallel_config.hpp"
#include "diffuse/parallel/partial_attention.hpp"
#include "diffuse/parallel/sequence_shards.hpp"
#include "support/test_support.hpp"

using namespace diffuse;

TEST(ContextParallelConfig, ValidatesAsDiffusersDoes) {
  EXPECT_NO_THROW((ContextParallelConfig{.ring_degree = 2, .ulysses_degree = 2}.validate(4, 24)));
  EXPECT_NO_THROW((ContextParallelConfig{.ulysses_degree = 4}.validate(8, 24)));
  auto message = [](ContextParallelConfig c, int64_t world, int64_t heads) {
    try {
      c.validate(world, heads);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message({}, 4, 24).find("both are 1"), std::string::npos);
  EXPECT_NE(message({.ring_degree = 0}, 4, 24).find("at least 1"), std::string::npos);
  EXPECT_NE(message({.ring_degree = 4, .ulysses_degree = 2}, 4, 24).find("more than the world size 4"), std::string::npos);
  EXPECT_NE(message({.ulysses_degree = 5}, 8, 24).find("does not divide the 24 attention heads"), std::string::npos);
  EXPECT_EQ((ContextParallelConfig{.ring_degree = 2, .ulysses_degree = 4}.describe()), "unified 2x4 (ring x ulysses)");
}

TEST(ParallelConfig, ValidatesTheCfgDimensionAgainstTheWorld) {
  EXPECT_NO_THROW((ParallelConfig{.cfg_degree = 2}.validate(2)));
  EXPECT_NO_THROW((ParallelConfig{.cfg_degree = 2, .ring_degree = 2, .ulysses_degree = 2}.validate(8)));
  auto message = [](ParallelConfig c, int64_t world) {
    try {
      c.validate(world);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message({.cfg_degree = 3}, 8).find("cfg_degree must be 1 or 2"), std::string::npos);
  EXPECT_NE(message({.cfg_degree = 0}, 8).find("cfg_degree must be 1 or 2"), std::string::npos);
  EXPECT_NE(message({}, 8).find("all are 1"), std::string::npos);
  EXPECT_NE(message({.cfg_degree = 2, .ulysses_degree = 0}, 8).find("at least 1"), std::string::npos);
  EXPECT_NE(message({.cfg_degree = 2, .ulysses_degree = 2}, 2).find("2 x 1 x 2 = 4 is more than the world size 2"),
            std::string::npos);
  EXPECT_EQ((ParallelConfig{.cfg_degree = 2}.describe()), "cfg 2");
  EXPECT_EQ((ParallelConfig{.cfg_degree = 2, .ring_degree = 2}.describe()), "cfg 2 x ring 2");
  EXPECT_EQ((ParallelConfig{.ulysses_degree = 4}.describe()), "ulysses 4");
  // A ContextParallelConfig is a ParallelConfig with cfg_degree 1 (what callers before cfg wrote).
  const ParallelConfig converted = ContextParallelConfig{.ring_degree = 2, .ulysses_degree = 3, .convert_to_fp32 = false};
  EXPECT_EQ(converted.cfg_degree, 1);
  EXPECT_EQ(converted.context_degree(), 6);
  EXPECT_FALSE(converted.context().convert_to_fp32);
  EXPECT_EQ(converted.context().describe(), "unified 2x3 (ring x ulysses)");
}

TEST(SequenceShards, AnyLengthSplitsContiguouslyAndEvenly) {
  EXPECT_EQ(shard_sizes(15, 4), (std::vector<int64_t>{4, 4, 4, 3}));
  EXPECT_EQ(shard_sizes(3, 4), (std::vector<int64_t>{1, 1, 1, 0}));
  EXPECT_EQ(shard_sizes(16, 4), (std::vector<int64_t>{4, 4, 4, 4}));
  for (int64_t length : {0, 1, 7, 15, 4096, 4608 + 512}) {
    for (int64_t parts : {1, 2, 3, 4, 8}) {
      at::Tensor x = at::arange(length);
      std::vector<at::Tensor> pieces;
      for (int64_t i = 0; i < parts; ++i) {
        EXPECT_EQ(shard_offset(length, parts, i), i == 0 ? 0 : shard_offset(length, parts, i - 1) + shard_sizes(length, parts)[i - 1]);
        pieces.push_back(take_shard(x, 0, parts, i));
      }
      EXPECT_TRUE(at::equal(at::cat(pieces), x)) << length << " over " << parts;
    }
  }
  EXPECT_THROW(shard_sizes(4, 0), Error);
  EXPECT_THROW(shard_offset(4, 2, 2), Error);
}

TEST(PartialAttention, MergedBlocksEqualAttentionOverAllKeys) {
  at::manual_seed(0);
  const at::Tensor q = at::randn({2, 3, 7, 16}), k = at::randn({2, 3, 15, 16}), v = at::randn({2, 3, 15, 16});
  const double scale = 0.25;
  const at::Tensor expected = math_attention(q, k, v, {.scale = scale});
  // 16 and 20 blocks of 15 keys: some blocks are empty, as on ranks whose shard has no tokens.
  for (int64_t blocks : {1, 2, 4, 15, 16, 20}) {
    PartialAttention total;
    for (int64_t i = 0; i < blocks; ++i)
      merge_partial_attention(total, math_attention_with_lse(q, take_shard(k, 2, blocks, i), take_shard(v, 2, blocks, i), scale),
                              /*float32_out=*/true);
    EXPECT_TENSORS_CLOSE(total.out, expected, 1e-5) << blocks << " blocks";
    EXPECT_TENSORS_CLOSE(total.lse, at::logsumexp(at::matmul(q, k.transpose(-2, -1)) * scale, -1), 1e-5);
  }
  // In bfloat16 with the float32 merge, the result stays at bfloat16's own rounding.
  PartialAttention total;
  for (int64_t i = 0; i < 3; ++i)
    merge_partial_attention(total, math_attention_with_lse(q.to(at::kBFloat16), take_shard(k, 2, 3, i).to(at::kBFloat16),
                                                           take_shard(v, 2, 3, i).to(at::kBFloat16), scale),
                            true);
  EXPECT_TENSORS_CLOSE(total.out, expected, 2e-2);
}
