#pragma once
// diffusers' FeedForward (attention.py): an up projection with its activation, dropout, a down
// projection, as the ModuleList `net` that checkpoints name: net.0 is the activation module holding
// the up projection (net.0.proj), net.1 dropout (no parameters), net.2 the down projection.
//
//   "gelu-approximate"  net.0 = GELU(dim, inner, approximate="tanh")   (FLUX.1, Qwen-Image)
//   "gelu"              net.0 = GELU(dim, inner)
//   "geglu"             net.0 = GEGLU(dim, inner): proj to 2 * inner, then x * gelu(gate)   (SD's UNet)

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "diffuse/models/layers.hpp"

namespace diffuse {

class FeedForwardImpl : public torch::nn::Module {
 public:
  // inner = dim * mult. Throws diffuse::Error for another activation_fn.
  FeedForwardImpl(int64_t dim, int64_t dim_out, int64_t mult, const at::TensorOptions& options,
                  const std::string& activation_fn = "gelu-approximate");
  at::Tensor forward(const at::Tensor& x);
  Linear proj_in{nullptr};   // net.0.proj
  Linear proj_out{nullptr};  // net.2

 private:
  std::string activation_fn_;
};
TORCH_MODULE(FeedForward);

}  // namespace diffuse
