#include "diffuse/models/feed_forward.hpp"

#include <torch/nn/modules/container/modulelist.h>

#include "diffuse/error.hpp"

namespace diffuse {

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t dim_out, int64_t mult, const at::TensorOptions& options,
                                 const std::string& activation_fn)
    : activation_fn_(activation_fn) {
  const bool gated = activation_fn == "geglu";
  if (!gated && activation_fn != "gelu-approximate" && activation_fn != "gelu")
    throw Error("FeedForward: activation_fn '" + activation_fn +
                "' is not supported (\"gelu-approximate\", \"gelu\" or \"geglu\")");
  const int64_t inner = dim * mult;
  auto act = std::make_shared<torch::nn::Module>();  // diffusers' GELU / GEGLU: a module whose child is `proj`
  proj_in = act->register_module("proj", Linear(dim, gated ? 2 * inner : inner, /*bias=*/true, options));
  proj_out = Linear(inner, dim_out, /*bias=*/true, options);
  torch::nn::ModuleList net;
  net->push_back(act);
  net->push_back(NoParameters());  // dropout
  net->push_back(proj_out);
  register_module("net", net);
}

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) {
  if (activation_fn_ == "gelu-approximate") return proj_out(linear_gelu_tanh(*proj_in, x));
  if (activation_fn_ == "gelu") return proj_out(at::gelu(proj_in(x)));
  // GEGLU: the first half of the projection, gated by the exact GELU of the second half.
  const auto halves = proj_in(x).chunk(2, /*dim=*/-1);
  return proj_out(halves[0] * at::gelu(halves[1]));
}

}  // namespace diffuse
