// CudaGraphCall (models/graph_call.hpp): replays give what the eager call gives, new shapes capture
// anew, a function that cannot be captured stays eager with the right results, and off CUDA every call
// is eager. The CUDA cases run with DIFFUSE_TEST_DEVICE=cuda on the GPU machine.

#include <ATen/ATen.h>

#include "diffuse/models/graph_call.hpp"
#include "support/test_support.hpp"

using namespace diffuse;

namespace {

// A few kernels that depend on every input: what a denoiser call looks like to the graph.
at::Tensor small_network(const std::vector<at::Tensor>& in) {
  return at::gelu(at::matmul(in[0], in[1]) + in[2]).sum(-1, /*keepdim=*/true) * 0.5;
}

std::vector<at::Tensor> random_inputs(int64_t rows, c10::Device device, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  auto r = [&](std::vector<int64_t> shape) { return at::randn(shape, g).to(device); };
  return {r({rows, 32}), r({32, 16}), r({16})};
}

}  // namespace

TEST(CudaGraphCall, EveryCallGivesWhatTheEagerCallGives) {
  const c10::Device device = test::test_device();
  CudaGraphCall call(small_network);
  for (uint64_t seed = 0; seed < 4; ++seed) {
    const std::vector<at::Tensor> inputs = random_inputs(8, device, seed);
    const at::Tensor out = call(inputs);
    // The first call is the eager warm-up; the later ones replay when the build and device can.
    EXPECT_EQ(call.replayed(), seed > 0 && device.is_cuda() && CudaGraphCall::supported()) << "call " << seed;
    EXPECT_TRUE(at::equal(out, small_network(inputs))) << "call " << seed;
  }
}

TEST(CudaGraphCall, NewShapesCaptureAnewAndTheOutputIsTheCallers) {
  const c10::Device device = test::test_device();
  CudaGraphCall call(small_network);
  const at::Tensor first = call(random_inputs(8, device, 1));
  const at::Tensor second = call(random_inputs(8, device, 2));
  const at::Tensor wider = call(random_inputs(24, device, 3));  // new shapes: eager, then captured
  EXPECT_FALSE(call.replayed());
  EXPECT_EQ(wider.size(0), 24);
  const at::Tensor again = call(random_inputs(24, device, 4));
  EXPECT_EQ(call.replayed(), device.is_cuda() && CudaGraphCall::supported());
  // Earlier results are copies: later replays do not overwrite them.
  EXPECT_TRUE(at::equal(second, small_network(random_inputs(8, device, 2))));
  EXPECT_TRUE(at::equal(again, small_network(random_inputs(24, device, 4))));
  EXPECT_FALSE(at::equal(first, second));
}

TEST(CudaGraphCall, AFunctionThatSynchronizesStaysEagerAndRight) {
  const c10::Device device = test::test_device();
  // .item() waits for the GPU, which capture forbids: the capture fails once, and every call is eager.
  auto synchronizing = [](const std::vector<at::Tensor>& in) {
    const double scale = in[0].abs().max().item<double>();
    return small_network(in) / scale;
  };
  CudaGraphCall call(synchronizing);
  for (uint64_t seed = 0; seed < 3; ++seed) {
    const std::vector<at::Tensor> inputs = random_inputs(8, device, seed);
    EXPECT_TRUE(at::allclose(call(inputs), synchronizing(inputs))) << "call " << seed;
    EXPECT_FALSE(call.replayed());
  }
}

TEST(CudaGraphCall, DisabledOrOnTheCpuEveryCallIsEager) {
  CudaGraphCall off(small_network, /*enabled=*/false);
  CudaGraphCall cpu(small_network);
  for (uint64_t seed = 0; seed < 3; ++seed) {
    const std::vector<at::Tensor> inputs = random_inputs(8, test::test_device(), seed);
    EXPECT_TRUE(at::equal(off(inputs), small_network(inputs)));
    EXPECT_FALSE(off.replayed());
    const std::vector<at::Tensor> on_cpu = random_inputs(8, c10::kCPU, seed);
    EXPECT_TRUE(at::equal(cpu(on_cpu), small_network(on_cpu)));
    EXPECT_FALSE(cpu.replayed());
  }
}
