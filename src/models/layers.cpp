#include "diffuse/models/layers.hpp"

#include <torch/version.h>

#include <ATen/core/Generator.h>
#include <ATen/CPUGeneratorImpl.h>

#include "diffuse/error.hpp"
#include "models/group_norm_nhwc.hpp"

namespace diffuse {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool has_bias,
                       const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({out_features, in_features}, options), false);
  if (has_bias) bias = register_parameter("bias", at::empty({out_features}, options), false);
}

at::Tensor LinearImpl::forward(const at::Tensor& input) { return at::linear(input, weight, bias); }

at::Tensor linear_gelu_tanh(LinearImpl& linear, const at::Tensor& x) {
#if TORCH_VERSION_MAJOR >= 2
  if (x.is_cuda() && linear.bias.defined() && x.scalar_type() != at::kFloat) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = linear.weight.size(0);
    const at::Tensor rows = x.reshape({-1, x.size(-1)});
    return at::_addmm_activation(linear.bias, rows, linear.weight.t(), 1, 1, /*use_gelu=*/true).view(shape);
  }
#endif
  return at::gelu(linear.forward(x), "tanh");
}

LayerNormImpl::LayerNormImpl(int64_t dim_, double eps_, bool elementwise_affine, bool has_bias,
                             const at::TensorOptions& options)
    : dim(dim_), eps(eps_) {
  if (elementwise_affine) {
    weight = register_parameter("weight", at::empty({dim}, options), false);
    if (has_bias) bias = register_parameter("bias", at::empty({dim}, options), false);
  }
}

at::Tensor LayerNormImpl::forward(const at::Tensor& input) {
  return at::layer_norm(input, {dim}, weight, bias, eps);
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, bool elementwise_affine, const at::TensorOptions& options)
    : eps(eps_) {
  if (elementwise_affine) weight = register_parameter("weight", at::empty({dim}, options), false);
}

at::Tensor RMSNormImpl::forward(const at::Tensor& input) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  // One fused kernel on CUDA (float32 inside, one rounding at the end).
  if (input.is_cuda() && weight.defined() && weight.scalar_type() == input.scalar_type())
    return at::rms_norm(input, {input.size(-1)}, weight, eps);
#endif
  const auto input_dtype = input.scalar_type();
  at::Tensor variance = input.to(at::kFloat).pow(2).mean(-1, /*keepdim=*/true);
  at::Tensor hidden = input * at::rsqrt(variance + eps);
  if (weight.defined()) {
    if (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16)
      hidden = hidden.to(weight.scalar_type());
    hidden = hidden * weight;
  } else {
    hidden = hidden.to(input_dtype);
  }
  return hidden;
}

GroupNormImpl::GroupNormImpl(int64_t num_groups_, int64_t num_channels, double eps_, bool affine,
                             const at::TensorOptions& options)
    : num_groups(num_groups_), eps(eps_) {
  if (num_channels % num_groups != 0)
    throw Error("GroupNorm: " + std::to_string(num_channels) + " channels do not split into " +
                std::to_string(num_groups) + " groups");
  if (affine) {
    weight = register_parameter("weight", at::empty({num_channels}, options), false);
    bias = register_parameter("bias", at::empty({num_channels}, options), false);
  }
}

at::Tensor GroupNormImpl::forward(const at::Tensor& input) {
  // Half-precision statistics on the CPU lose ~5x more than float32 rounded once at the end, so the
  // CPU computes in float32. CUDA's kernel already accumulates in float32 and rounds once at the end:
  // there the copies to and from float32 (two passes over the activations, ~60 times per SD UNet
  // call) would only cost time.
  if (!input.is_cuda() && (input.scalar_type() == at::kBFloat16 || input.scalar_type() == at::kHalf)) {
    const at::Tensor w = weight.defined() ? weight.to(at::kFloat) : weight;
    const at::Tensor b = bias.defined() ? bias.to(at::kFloat) : bias;
    return at::group_norm(input.to(at::kFloat), num_groups, w, b, eps).to(input.scalar_type());
  }
  if (fused_group_norm_available(input, *this)) return fused_group_norm(input, *this, /*silu=*/false);
  return at::group_norm(input, num_groups, weight, bias, eps);
}

at::Tensor GroupNormImpl::forward_then(const at::Tensor& input, const std::string& activation_name,
                                       const at::Tensor& input_bias) {
  if ((activation_name == "silu" || activation_name == "swish") && fused_group_norm_available(input, *this, input_bias))
    return fused_group_norm(input, *this, /*silu=*/true, input_bias);
  const at::Tensor x = input_bias.defined() ? input + input_bias.unsqueeze(-1).unsqueeze(-1) : input;
  return activation(forward(x), activation_name);
}

Conv2dImpl::Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride_,
                       int64_t padding_, bool has_bias, const at::TensorOptions& options)
    : stride(stride_), padding(padding_) {
  weight = register_parameter("weight", at::empty({out_channels, in_channels, kernel_size, kernel_size}, options),
                              false);
  if (has_bias) bias = register_parameter("bias", at::empty({out_channels}, options), false);
}

at::Tensor Conv2dImpl::forward(const at::Tensor& input) {
  if (input.is_cuda() && input.dim() == 4 && input.suggest_memory_format() == at::MemoryFormat::ChannelsLast &&
      !weight.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    at::NoGradGuard no_grad;
    weight.set_data(weight.contiguous(at::MemoryFormat::ChannelsLast));
  }
  return at::conv2d(input, weight, bias, {stride, stride}, {padding, padding});
}

EmbeddingImpl::EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim, const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({num_embeddings, embedding_dim}, options), false);
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& indices) {
  // An id past the table is an index error on the CPU and a device-side assert that kills the process
  // on CUDA; said here, it names the likely cause (a tokenizer of another model).
  if (indices.numel() > 0) {
    const int64_t rows = weight.size(0);
    const int64_t low = indices.min().item<int64_t>(), high = indices.max().item<int64_t>();
    if (low < 0 || high >= rows)
      throw Error("token id " + std::to_string(low < 0 ? low : high) + " is outside the embedding table of " +
                  std::to_string(rows) + " rows (ids must be in [0, " + std::to_string(rows - 1) +
                  "]); was the text made by a tokenizer of another model?");
  }
  return at::embedding(weight, indices);
}

at::Tensor activation(const at::Tensor& input, const std::string& name) {
  if (name == "silu" || name == "swish") return at::silu(input);
  if (name == "gelu") return at::gelu(input);
  if (name == "gelu_tanh" || name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu-approximate")
    return at::gelu(input, "tanh");
  if (name == "quick_gelu") return input * at::sigmoid(1.702 * input);
  if (name == "relu") return at::relu(input);
  throw Error("unknown activation function '" + name + "'");
}

void init_random_parameters(torch::nn::Module& module, uint64_t seed) {
  at::NoGradGuard no_grad;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    at::Tensor& p = item.value();
    const std::string& name = item.key();
    const bool is_bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
    at::Tensor values;
    if (is_bias) {
      values = at::zeros(p.sizes(), at::kFloat);
    } else if (p.dim() == 1) {
      values = at::ones(p.sizes(), at::kFloat);
    } else {
      values = at::normal(0.0, 0.02, p.sizes(), generator, at::TensorOptions().dtype(at::kFloat));
    }
    p.copy_(values);
  }
}

}  // namespace diffuse
