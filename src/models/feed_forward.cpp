#include "diffuse/models/feed_forward.hpp"

#include <torch/nn/modules/container/modulelist.h>

#include "diffuse/error.hpp"

#if DIFFUSE_HAS_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/geglu.hpp"
#endif

namespace diffuse {
namespace {

// halves[0] * gelu(halves[1]) of `projection` [..., 2 * width] in one CUDA kernel (src/kernels/geglu.cu,
// the same roundings); an undefined tensor where the kernel does not take it (CPU, float32, odd width).
at::Tensor fused_geglu(const at::Tensor& projection) {
#if DIFFUSE_HAS_CUDA_KERNELS
  const int64_t width = projection.size(-1) / 2;
  if (!projection.is_cuda() || !projection.is_contiguous() || projection.size(-1) % 2 != 0 ||
      !(projection.scalar_type() == at::kHalf || projection.scalar_type() == at::kBFloat16) ||
      !kernels::geglu_supports(width) || reinterpret_cast<uintptr_t>(projection.data_ptr()) % 4 != 0)
    return {};
  const c10::cuda::CUDAGuard guard(projection.device());
  std::vector<int64_t> shape = projection.sizes().vec();
  shape.back() = width;
  at::Tensor out = at::empty(shape, projection.options());
  const kernels::GegluArgs args{projection.data_ptr(), out.data_ptr(), projection.numel() / (2 * width), width,
                                projection.scalar_type() == at::kHalf};
  const int status = kernels::geglu(args, at::cuda::getCurrentCUDAStream(projection.device().index()).stream());
  if (status != 0) throw Error("GEGLU: the CUDA kernel failed to launch (error " + std::to_string(status) + ")");
  return out;
#else
  (void)projection;
  return {};
#endif
}

}  // namespace

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
  const at::Tensor projection = proj_in(x);
  if (const at::Tensor gated = fused_geglu(projection); gated.defined()) return proj_out(gated);
  const auto halves = projection.chunk(2, /*dim=*/-1);
  return proj_out(halves[0] * at::gelu(halves[1]));
}

}  // namespace diffuse
