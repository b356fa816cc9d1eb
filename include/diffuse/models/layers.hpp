#pragma once
// The building blocks every model shares. Unlike torch::nn's, their parameters are allocated with the
// caller's TensorOptions (dtype, device) and left uninitialized: weights come from a checkpoint right
// after, so a 12B-parameter model is never initialized twice or built in float32 on the CPU first.
// Parameter names match torch.nn's ("weight", "bias"), so state dicts load by name.

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <vector>

namespace diffuse {

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input);
  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out] or undefined
};
TORCH_MODULE(Linear);

// gelu(linear(x), approximate="tanh"). On CUDA with libtorch 2.x the activation is the GEMM's own
// epilogue (cuBLASLt GELU_BIAS, the tanh form), saving a pass over the widest activation of a block.
at::Tensor linear_gelu_tanh(LinearImpl& linear, const at::Tensor& x);

class LayerNormImpl : public torch::nn::Module {
 public:
  // elementwise_affine=false gives diffusers' LayerNorm(..., elementwise_affine=False) (no parameters).
  LayerNormImpl(int64_t dim, double eps, bool elementwise_affine, bool bias, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input);
  int64_t dim;
  double eps;
  at::Tensor weight, bias;
};
TORCH_MODULE(LayerNorm);

// diffusers' RMSNorm: the mean of squares in float32, then the weight in the weight's dtype.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, bool elementwise_affine, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input);
  double eps;
  at::Tensor weight;
};
TORCH_MODULE(RMSNorm);

class GroupNormImpl : public torch::nn::Module {
 public:
  GroupNormImpl(int64_t num_groups, int64_t num_channels, double eps, bool affine, const at::TensorOptions& options);
  // Keeps a channels-last input channels-last (own CUDA kernels for bfloat16/float16).
  at::Tensor forward(const at::Tensor& input);
  // activation(forward(input + input_bias[:, :, None, None])) by name (layers' activation());
  // `input_bias` is optional, [batch, channels]. "silu" on channels-last CUDA input is one fused pass
  // with the same roundings as the separate steps.
  at::Tensor forward_then(const at::Tensor& input, const std::string& activation_name,
                          const at::Tensor& input_bias = {});
  int64_t num_groups;
  double eps;
  at::Tensor weight, bias;
};
TORCH_MODULE(GroupNorm);

class Conv2dImpl : public torch::nn::Module {
 public:
  Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride, int64_t padding,
             bool bias, const at::TensorOptions& options);
  // A channels-last CUDA input gets cuDNN's NHWC kernels; the weight is then made channels-last once
  // (same values), so that cuDNN does not convert it on every call.
  at::Tensor forward(const at::Tensor& input);
  int64_t stride, padding;
  at::Tensor weight, bias;
};
TORCH_MODULE(Conv2d);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim, const at::TensorOptions& options);
  // Throws diffuse::Error for an index outside [0, num_embeddings) before looking anything up.
  at::Tensor forward(const at::Tensor& indices);
  at::Tensor weight;  // [num_embeddings, embedding_dim]
};
TORCH_MODULE(Embedding);

// A placeholder child with no parameters, for positions in a diffusers ModuleList that hold dropout
// or an activation (e.g. `ff.net.1`), so that the following indices keep diffusers' numbers.
class NoParametersImpl : public torch::nn::Module {};
TORCH_MODULE(NoParameters);

// Activations by the names configs use: "silu", "gelu", "gelu_tanh"/"gelu_new"/"gelu_pytorch_tanh",
// "quick_gelu", "relu". Throws diffuse::Error for an unknown name.
at::Tensor activation(const at::Tensor& input, const std::string& name);

// Fills every parameter of `module` with seeded random values (normal, std 0.02; norm weights 1,
// biases 0): for benchmarks and tests that need a model without a checkpoint.
void init_random_parameters(torch::nn::Module& module, uint64_t seed);

}  // namespace diffuse
