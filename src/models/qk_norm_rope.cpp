#include "models/qk_norm_rope.hpp"

#include <string>

#include "diffuse/error.hpp"

#if DIFFUSE_HAS_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/rms_norm_rope.hpp"
#endif

namespace diffuse {

bool fused_qk_norm_rope_available(const at::Tensor& x, int64_t head_dim) {
#if DIFFUSE_HAS_CUDA_KERNELS
  return x.is_cuda() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf) && x.dim() == 3 &&
         x.stride(2) == 1 && kernels::rms_norm_rope_supports(head_dim);
#else
  (void)x, (void)head_dim;
  return false;
#endif
}

void fused_qk_norm_rope(const at::Tensor& x, const RMSNormImpl& norm, const at::Tensor& phasor, const at::Tensor& out,
                        int64_t out_offset) {
  const int64_t batch = x.size(0), tokens = x.size(1), heads = out.size(2), head_dim = out.size(3);
  if (!fused_qk_norm_rope_available(x, head_dim) || x.size(2) != heads * head_dim)
    throw Error("fused_qk_norm_rope: x " + c10::str(x.sizes()) + " (" + c10::toString(x.scalar_type()) +
                ") does not fit the kernel or out " + c10::str(out.sizes()));
  if (out.scalar_type() != x.scalar_type() || out.stride(3) != 1 || out.stride(2) != head_dim ||
      out.size(0) != batch || out_offset < 0 || out_offset + tokens > out.size(1))
    throw Error("fused_qk_norm_rope: out " + c10::str(out.sizes()) + " cannot take " + std::to_string(tokens) +
                " tokens at " + std::to_string(out_offset));
  if (!norm.weight.defined() || norm.weight.scalar_type() != x.scalar_type() || !norm.weight.is_contiguous() ||
      norm.weight.numel() != head_dim)
    throw Error("fused_qk_norm_rope: the RMSNorm needs a contiguous weight of " + std::to_string(head_dim) +
                " values in " + c10::toString(x.scalar_type()));
  if (phasor.scalar_type() != at::kComplexFloat || !phasor.is_contiguous() || phasor.size(0) != tokens ||
      phasor.size(1) != head_dim / 2)
    throw Error("fused_qk_norm_rope: the rotary phasor must be contiguous complex64 [" + std::to_string(tokens) + ", " +
                std::to_string(head_dim / 2) + "], got " + c10::str(phasor.sizes()));
#if DIFFUSE_HAS_CUDA_KERNELS
  const c10::cuda::CUDAGuard guard(x.device());
  kernels::RmsNormRopeArgs args{};
  args.x = x.data_ptr();
  args.x_batch_stride = x.stride(0);
  args.x_token_stride = x.stride(1);
  args.weight = norm.weight.data_ptr();
  args.phasor = phasor.data_ptr();
  args.out = out.narrow(1, out_offset, tokens).data_ptr();
  args.out_batch_stride = out.stride(0);
  args.out_token_stride = out.stride(1);
  args.batch = batch;
  args.tokens = tokens;
  args.heads = heads;
  args.head_dim = head_dim;
  args.eps = static_cast<float>(norm.eps);
  args.half = x.scalar_type() == at::kHalf;
  const int status = kernels::rms_norm_rope(args, at::cuda::getCurrentCUDAStream(x.device().index()).stream());
  if (status != 0) throw Error("fused_qk_norm_rope: the CUDA kernel failed to launch (error " + std::to_string(status) + ")");
#endif
}

}  // namespace diffuse
