// Attention backends: names, the automatic choice, errors for a backend that cannot run, and every
// backend's output and log-sum-exp against float64 attention. The fused backends run where the tests
// run on CUDA (DIFFUSE_TEST_DEVICE=cuda with libtorch 2.x); on the CPU they must refuse clearly.

#include <torch/version.h>

#include <cmath>
#include <limits>

#include "diffuse/error.hpp"
#include "diffuse/models/attention_backend.hpp"
#include "support/test_support.hpp"

using namespace diffuse;

namespace {

struct Reference {
  at::Tensor out;  // float64
  at::Tensor lse;  // float64
};

Reference exact(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const at::Tensor scores = at::matmul(q.to(at::kDouble).cpu(), k.to(at::kDouble).cpu().transpose(-2, -1)) * scale;
  return {at::softmax(scores, -1).matmul(v.to(at::kDouble).cpu()), at::logsumexp(scores, -1)};
}

struct Inputs {
  at::Tensor q, k, v;
};

// [batch 2, heads 4, q_len, head_dim] with a key length of its own, drawn in float64 then cast.
Inputs draw(int64_t q_len, int64_t k_len, int64_t head_dim, at::ScalarType dtype, c10::Device device) {
  at::manual_seed(q_len * 1000 + k_len);
  auto make = [&](int64_t len) { return at::randn({2, 4, len, head_dim}, at::kDouble).to(dtype).to(device); };
  return {make(q_len), make(k_len), make(k_len)};
}

// bf16 inputs and outputs: about 3 significant digits.
double tolerance_for(at::ScalarType dtype) { return dtype == at::kBFloat16 ? 2e-2 : dtype == at::kHalf ? 4e-3 : 1e-5; }

}  // namespace

TEST(AttentionBackendNames, ParseOwnAndDiffusersNames) {
  EXPECT_EQ(parse_attention_backend("auto"), AttentionBackend::automatic);
  EXPECT_EQ(parse_attention_backend("cudnn"), AttentionBackend::cudnn);
  EXPECT_EQ(parse_attention_backend("_native_cudnn"), AttentionBackend::cudnn);
  EXPECT_EQ(parse_attention_backend("_native_flash"), AttentionBackend::flash);
  EXPECT_EQ(parse_attention_backend("efficient"), AttentionBackend::efficient);
  for (const std::string& name : attention_backend_names())
    EXPECT_EQ(attention_backend_name(parse_attention_backend(name)), name);
  EXPECT_ERROR_CONTAINS(parse_attention_backend("sage"), "unknown attention backend 'sage' (known: auto, math");
}

TEST(AttentionBackendMath, MatchesFloat64WithLogSumExp) {
  const c10::Device cpu(c10::kCPU);
  for (int64_t k_len : {1, 7, 40}) {
    const Inputs in = draw(9, k_len, 16, at::kFloat, cpu);
    const Reference ref = exact(in.q, in.k, in.v, 0.25);
    const PartialAttention got = attention_with_lse(in.q, in.k, in.v, 0.25, AttentionBackend::math);
    EXPECT_EQ(got.out.scalar_type(), at::kFloat);
    EXPECT_EQ(got.lse.sizes(), (std::vector<int64_t>{2, 4, 9}));
    EXPECT_TENSORS_CLOSE(got.out, ref.out, 1e-5);
    EXPECT_TENSORS_CLOSE(got.lse, ref.lse, 1e-5);
    EXPECT_TENSORS_CLOSE(attention(in.q, in.k, in.v, 0.25), ref.out, 1e-5);
  }
}

TEST(AttentionBackendMath, EmptyBlocks) {
  const Inputs in = draw(5, 0, 8, at::kFloat, c10::Device(c10::kCPU));
  const PartialAttention none = attention_with_lse(in.q, in.k, in.v, 1.0);
  EXPECT_TRUE(at::equal(none.out, at::zeros_like(in.q)));
  EXPECT_TRUE(at::all(none.lse == -std::numeric_limits<float>::infinity()).item<bool>());
  const Inputs no_queries = draw(0, 6, 8, at::kFloat, c10::Device(c10::kCPU));
  EXPECT_EQ(attention(no_queries.q, no_queries.k, no_queries.v, 1.0).size(2), 0);
}

TEST(AttentionBackendChoice, AutomaticOnTheCpuIsMathAndFusedOnesRefuse) {
  const Inputs in = draw(4, 4, 8, at::kFloat, c10::Device(c10::kCPU));
  EXPECT_EQ(resolve_attention_backend(AttentionBackend::automatic, in.q), AttentionBackend::math);
  for (AttentionBackend fused : {AttentionBackend::flash, AttentionBackend::cudnn, AttentionBackend::efficient}) {
    const std::string message = test::error_of([&] { attention(in.q, in.k, in.v, 1.0, fused); });
    EXPECT_NE(message.find("attention backend '" + attention_backend_name(fused) + "' cannot run here"),
              std::string::npos)
        << message;
  }
}

#if TORCH_VERSION_MAJOR >= 2
// Every fused backend against float64, output and log-sum-exp; then ring-style: three key blocks merged
// by their log-sum-exp equal attention over all keys.
TEST(AttentionBackendCuda, EveryBackendMatchesFloat64) {
  const c10::Device device = test::test_device();
  if (!device.is_cuda()) GTEST_SKIP() << "fused attention backends need CUDA (DIFFUSE_TEST_DEVICE=cuda)";
  const Inputs bf16 = draw(8, 8, 128, at::kBFloat16, device);
  EXPECT_EQ(resolve_attention_backend(AttentionBackend::automatic, bf16.q), AttentionBackend::cudnn);
  // No fused kernel takes float64: automatic stays exact.
  EXPECT_EQ(resolve_attention_backend(AttentionBackend::automatic, bf16.q.to(at::kDouble)), AttentionBackend::math);
  EXPECT_ERROR_CONTAINS(attention(bf16.q.to(at::kFloat), bf16.k.to(at::kFloat), bf16.v.to(at::kFloat), 1.0,
                                  AttentionBackend::flash),
                        "needs float16 or bfloat16");
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kFloat}) {
    for (AttentionBackend backend : {AttentionBackend::automatic, AttentionBackend::native, AttentionBackend::flash,
                                     AttentionBackend::efficient, AttentionBackend::cudnn}) {
      if (dtype == at::kFloat && (backend == AttentionBackend::flash || backend == AttentionBackend::cudnn)) continue;
      for (auto [q_len, k_len] : {std::pair<int64_t, int64_t>{77, 77}, {300, 1029}, {33, 5}}) {
        const Inputs in = draw(q_len, k_len, 128, dtype, device);
        const double scale = 1.0 / std::sqrt(128.0);
        const Reference ref = exact(in.q, in.k, in.v, scale);
        const std::string what = attention_backend_name(backend) + " " + c10::toString(dtype) + " q " +
                                 std::to_string(q_len) + " k " + std::to_string(k_len);
        SCOPED_TRACE(what);
        EXPECT_TENSORS_CLOSE(attention(in.q, in.k, in.v, scale, backend), ref.out, tolerance_for(dtype));
        if (backend == AttentionBackend::native) continue;  // no log-sum-exp
        const PartialAttention whole = attention_with_lse(in.q, in.k, in.v, scale, backend);
        EXPECT_EQ(whole.lse.sizes(), (std::vector<int64_t>{2, 4, q_len}));
        EXPECT_TENSORS_CLOSE(whole.lse, ref.lse, 1e-3);
        PartialAttention merged;
        for (int64_t block = 0, start = 0; block < 3; ++block) {
          const int64_t length = k_len / 3 + (block < k_len % 3 ? 1 : 0);
          merge_partial_attention(merged,
                                  attention_with_lse(in.q, in.k.narrow(2, start, length).contiguous(),
                                                     in.v.narrow(2, start, length).contiguous(), scale, backend),
                                  /*float32_out=*/true);
          start += length;
        }
        EXPECT_TENSORS_CLOSE(merged.out, ref.out, tolerance_for(dtype));
        test::print_error(what.c_str(), merged.out, ref.out);
      }
    }
  }
}
#endif
