// OffloadedTensors (placement/offloaded_tensors.hpp), the home copies under both CPU offloads: a
// module's weights brought onto the test device and dropped back to their CPU home copies, also after
// the module replaced its weight there (Conv2d's channels-last weight), with new CPU weights adopted,
// and on CUDA pinned home copies packed into slabs and the GPU memory given back; SlabCopier's packing.

#include <torch/cuda.h>

#include "diffuse/models/layers.hpp"
#include "diffuse/placement/device_memory.hpp"
#include "diffuse/placement/offloaded_tensors.hpp"
#include "support/test_support.hpp"

using namespace diffuse;

namespace {

Conv2d seeded_conv() {
  at::manual_seed(7);
  Conv2d conv(4, 8, 3, 1, 1, /*bias=*/true, at::TensorOptions().dtype(at::kFloat));
  at::NoGradGuard no_grad;
  conv->weight.normal_();
  conv->bias.normal_();
  return conv;
}

}  // namespace

TEST(OffloadedTensors, BringInRunsOnTheDeviceAndDropReturnsToTheHomeCopies) {
  const c10::Device device = test::test_device();
  Conv2d conv = seeded_conv();
  const at::Tensor weight_before = conv->weight.clone(), bias_before = conv->bias.clone();
  const at::Tensor input = at::randn({2, 4, 6, 6}).contiguous(at::MemoryFormat::ChannelsLast);
  at::NoGradGuard no_grad;
  const at::Tensor expected = conv->forward(input.contiguous());

  OffloadedTensors weights(module_tensors(*conv), device);
  EXPECT_TRUE(weights.holds(module_tensors(*conv)));
  EXPECT_EQ(weights.home_bytes(), static_cast<uint64_t>((8 * 4 * 3 * 3 + 8) * sizeof(float)));
  EXPECT_EQ(weights.device(), device);
  for (int call = 0; call < 2; ++call) {
    weights.bring_in();
    EXPECT_EQ(conv->weight.device(), device);
    EXPECT_EQ(conv->bias.device(), device);
    // A channels-last input on CUDA makes Conv2d replace its weight by a channels-last copy.
    const at::Tensor out = conv->forward(input.to(device));
    weights.drop();
    EXPECT_TRUE(conv->weight.device().is_cpu()) << "call " << call;
    EXPECT_TRUE(conv->weight.is_contiguous()) << "call " << call;
    EXPECT_TRUE(at::equal(conv->weight, weight_before)) << "call " << call;
    EXPECT_TRUE(at::equal(conv->bias, bias_before)) << "call " << call;
    // cuDNN may use TF32 for float32 convolutions.
    EXPECT_TENSORS_CLOSE(out.cpu(), expected, device.is_cuda() ? 1e-2 : 1e-5) << "call " << call;
  }
}

TEST(OffloadedTensors, AWeightReplacedOnTheDeviceIsDroppedWithIt) {
  const c10::Device device = test::test_device();
  Conv2d conv = seeded_conv();
  const at::Tensor weight_before = conv->weight.clone();
  OffloadedTensors weights(module_tensors(*conv), device);
  at::NoGradGuard no_grad;
  weights.bring_in();
  // What a module may do while it runs: give its parameter other data on the device.
  conv->weight.set_data(at::zeros_like(conv->weight).contiguous(at::MemoryFormat::ChannelsLast));
  weights.drop();
  EXPECT_TRUE(at::equal(conv->weight, weight_before));
  weights.bring_in();
  EXPECT_TRUE(at::equal(conv->weight.cpu(), weight_before));
  weights.drop();
}

TEST(OffloadedTensors, NewCpuWeightsGivenWhileDroppedBecomeTheHomeCopy) {
  const c10::Device device = test::test_device();
  Conv2d conv = seeded_conv();
  OffloadedTensors weights(module_tensors(*conv), device);
  at::NoGradGuard no_grad;
  const at::Tensor replacement = at::full_like(conv->weight, 0.5);
  conv->weight.set_data(replacement.clone());  // e.g. other weights loaded into the model
  weights.bring_in();
  EXPECT_TRUE(at::equal(conv->weight.cpu(), replacement));
  weights.drop();
  EXPECT_TRUE(conv->weight.device().is_cpu());
  EXPECT_TRUE(at::equal(conv->weight, replacement));
  if (device.is_cuda()) EXPECT_TRUE(conv->weight.is_pinned());
}

TEST(OffloadedTensors, ARegisteredParameterMakesThemStale) {
  Conv2d conv = seeded_conv();
  OffloadedTensors weights(module_tensors(*conv), c10::kCPU);
  conv->register_parameter("extra", at::ones({3}), false);
  EXPECT_FALSE(weights.holds(module_tensors(*conv)));
}

TEST(SlabCopier, PacksCopiesOfAnyDtypeIntoPowerOfTwoSlabs) {
  at::manual_seed(3);
  const std::vector<at::Tensor> sources = {
      at::randn({10, 25}),                                     // 1000 bytes -> 1024 in a slab
      at::randn({3, 7}).to(at::kBFloat16),                     // 42 -> 512
      at::arange(5, at::kLong),                                // 40 -> 512
      at::empty({0, 4}),                                       // nothing
      at::randn({8, 6}).t(),                                   // 192 -> 512; not contiguous: copied contiguous
      at::randn({2, 4, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast)};  // 288 -> 512
  SlabCopier slabs(sources, /*pinned=*/false);
  std::vector<at::Tensor> copies;
  for (const at::Tensor& source : sources) copies.push_back(slabs.copy(source));
  for (size_t i = 0; i < sources.size(); ++i) {
    EXPECT_TRUE(at::equal(copies[i], sources[i])) << i;
    EXPECT_EQ(copies[i].scalar_type(), sources[i].scalar_type()) << i;
    EXPECT_TRUE(copies[i].is_contiguous()) << i;
    EXPECT_EQ(copies[i].storage_offset() * copies[i].element_size() % 512, 0) << i << ": offset in its slab";
  }
  // 3072 bytes in all: a slab of 2048 (the largest power of two they fill) takes the first four, one
  // of 1024 the last two; tensor by tensor the pinned allocator would round them to 1024 + 5 x 512.
  for (size_t i : {1, 2, 3}) EXPECT_TRUE(copies[i].is_alias_of(copies[0])) << i;
  EXPECT_TRUE(copies[5].is_alias_of(copies[4]));
  EXPECT_FALSE(copies[4].is_alias_of(copies[0]));
  EXPECT_EQ(copies[0].storage().nbytes(), 2048u);
  EXPECT_EQ(copies[4].storage().nbytes(), 1024u);
}

TEST(OffloadedTensors, OnCudaHomeCopiesArePinnedAndTheGpuMemoryIsGivenBack) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs CUDA: libtorch sees no GPU here";
  const c10::Device device = test::test_device().is_cuda() ? test::test_device() : c10::Device(c10::kCUDA, 0);
  Conv2d conv = seeded_conv();
  OffloadedTensors weights(module_tensors(*conv), device);
  for (const at::Tensor& t : module_tensors(*conv)) EXPECT_TRUE(t.is_pinned());
  EXPECT_TRUE(conv->weight.is_alias_of(conv->bias)) << "pinned home copies are packed into one slab";
  const uint64_t before = memory_allocated(device);
  weights.bring_in();
  EXPECT_GE(memory_allocated(device), before + weights.home_bytes());
  weights.drop();
  EXPECT_EQ(memory_allocated(device), before);
  for (const at::Tensor& t : module_tensors(*conv)) EXPECT_TRUE(t.is_pinned());
}
