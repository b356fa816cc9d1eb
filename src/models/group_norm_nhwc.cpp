#include "models/group_norm_nhwc.hpp"

#include <ATen/ATen.h>

#include "diffuse/error.hpp"
#include "diffuse/models/layers.hpp"

#if DIFFUSE_HAS_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/group_norm_nhwc.hpp"
#endif

namespace diffuse {

bool channels_last_group_norm_available(const at::Tensor& x) {
#if DIFFUSE_HAS_CUDA_KERNELS
  return x.is_cuda() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
#else
  (void)x;
  return false;
#endif
}

at::Tensor channels_last_where_fused(const at::Tensor& x) {
  return channels_last_group_norm_available(x) ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
}

bool fused_group_norm_available(const at::Tensor& x, const GroupNormImpl& norm, const at::Tensor& x_bias) {
#if DIFFUSE_HAS_CUDA_KERNELS
  const bool bias_fits = !x_bias.defined() || (x_bias.dim() == 2 && x.dim() >= 2 && x_bias.size(0) == x.size(0) &&
                                               x_bias.size(1) == x.size(1) && x_bias.scalar_type() == x.scalar_type() &&
                                               x_bias.device() == x.device());
  return bias_fits && channels_last_group_norm_available(x) && x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
         norm.weight.defined() && norm.bias.defined() && norm.weight.scalar_type() == x.scalar_type() &&
         norm.bias.scalar_type() == x.scalar_type() && norm.weight.is_contiguous() && norm.bias.is_contiguous() &&
         norm.weight.device() == x.device() && norm.bias.device() == x.device() &&
         reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && kernels::group_norm_nhwc_supports(x.size(1), norm.num_groups);
#else
  (void)x, (void)norm, (void)x_bias;
  return false;
#endif
}

at::Tensor fused_group_norm(const at::Tensor& x, const GroupNormImpl& norm, bool silu, const at::Tensor& x_bias) {
  if (!fused_group_norm_available(x, norm, x_bias))
    throw Error("fused_group_norm: input " + c10::str(x.sizes()) + " (" + c10::toString(x.scalar_type()) + ")" +
                (x_bias.defined() ? ", x_bias " + c10::str(x_bias.sizes()) : std::string()) +
                " or its norm does not fit the channels-last kernel");
  const at::Tensor bias = x_bias.defined() ? x_bias.contiguous() : x_bias;
#if DIFFUSE_HAS_CUDA_KERNELS
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), channels = x.size(1), positions = x.size(2) * x.size(3);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  const at::Tensor workspace = at::empty(
      {kernels::group_norm_nhwc_workspace_floats(batch, positions, channels, norm.num_groups)},
      x.options().dtype(at::kFloat));
  kernels::GroupNormNhwcArgs args{};
  args.x = x.data_ptr();
  args.x_bias = bias.defined() ? bias.data_ptr() : nullptr;
  args.weight = norm.weight.data_ptr();
  args.bias = norm.bias.data_ptr();
  args.out = out.data_ptr();
  args.workspace = workspace.data_ptr<float>();
  args.batch = batch;
  args.positions = positions;
  args.channels = channels;
  args.groups = norm.num_groups;
  args.eps = static_cast<float>(norm.eps);
  args.silu = silu;
  args.half = x.scalar_type() == at::kHalf;
  const int status = kernels::group_norm_nhwc(args, at::cuda::getCurrentCUDAStream(x.device().index()).stream());
  if (status != 0) throw Error("fused_group_norm: the CUDA kernels failed to launch (error " + std::to_string(status) + ")");
  return out;
#else
  (void)silu;
  return x;
#endif
}

}  // namespace diffuse
