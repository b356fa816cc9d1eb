#include "diffuse/models/attention_backend.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <atomic>
#include <limits>

#include "diffuse/error.hpp"

namespace diffuse {
namespace {

struct NamedBackend {
  std::string_view name;
  AttentionBackend backend;
};

constexpr NamedBackend kNames[] = {
    {"auto", AttentionBackend::automatic},       {"math", AttentionBackend::math},
    {"native", AttentionBackend::native},        {"flash", AttentionBackend::flash},
    {"efficient", AttentionBackend::efficient},  {"cudnn", AttentionBackend::cudnn},
    // diffusers' registry names for the same kernels.
    {"_native_math", AttentionBackend::math},    {"_native_flash", AttentionBackend::flash},
    {"_native_efficient", AttentionBackend::efficient}, {"_native_cudnn", AttentionBackend::cudnn},
};

bool half_precision(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

// Set when cuDNN refused a call under `automatic` (an old cuDNN, an unsupported GPU): automatic then
// stays on flash for the rest of the process instead of failing once per call.
std::atomic<bool> cudnn_refused{false};

[[noreturn]] void cannot_run(AttentionBackend backend, const std::string& why) {
  throw Error("attention backend '" + attention_backend_name(backend) + "' cannot run here: " + why);
}

#if TORCH_VERSION_MAJOR >= 2
// Each fused kernel's output and log-sum-exp. The lse layouts differ: flash gives [b, h, q_len];
// cuDNN may add a trailing 1; the efficient kernel pads q_len up to a multiple of 32.
PartialAttention fused_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                AttentionBackend backend) {
  at::Tensor out, lse;
  switch (backend) {
    case AttentionBackend::flash: {
      auto result = at::_scaled_dot_product_flash_attention(q, k, v, /*dropout_p=*/0.0, /*is_causal=*/false,
                                                            /*return_debug_mask=*/false, scale);
      out = std::get<0>(result), lse = std::get<1>(result);
      break;
    }
    case AttentionBackend::cudnn: {
      auto result = at::_scaled_dot_product_cudnn_attention(q, k, v, /*attn_bias=*/std::nullopt,
                                                            /*compute_log_sumexp=*/true, /*dropout_p=*/0.0,
                                                            /*is_causal=*/false, /*return_debug_mask=*/false, scale);
      out = std::get<0>(result), lse = std::get<1>(result);
      break;
    }
    default: {  // efficient
      auto result = at::_scaled_dot_product_efficient_attention(q, k, v, /*attn_bias=*/std::nullopt,
                                                                /*compute_log_sumexp=*/true, /*dropout_p=*/0.0,
                                                                /*is_causal=*/false, scale);
      out = std::get<0>(result), lse = std::get<1>(result);
      break;
    }
  }
  if (lse.dim() == 4) lse = lse.squeeze(-1);
  lse = lse.narrow(-1, 0, q.size(2)).to(at::kFloat);
  return {out, lse};
}

// The output alone: the same kernels, without the log-sum-exp where they can skip it.
at::Tensor fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                 AttentionBackend backend) {
  switch (backend) {
    case AttentionBackend::native:
      return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/std::nullopt, 0.0, false, scale);
    case AttentionBackend::cudnn:
      return std::get<0>(at::_scaled_dot_product_cudnn_attention(q, k, v, std::nullopt, /*compute_log_sumexp=*/false,
                                                                 0.0, false, false, scale));
    case AttentionBackend::efficient:
      return std::get<0>(at::_scaled_dot_product_efficient_attention(q, k, v, std::nullopt,
                                                                     /*compute_log_sumexp=*/false, 0.0, false, scale));
    default:
      return fused_with_lse(q, k, v, scale, backend).out;
  }
}
#endif

// Runs `call` on the resolved backend. Under automatic, a cuDNN refusal falls back to flash once and
// for all; a backend named explicitly reports the kernel's own reason.
template <typename Call>
auto dispatch(AttentionBackend requested, const at::Tensor& q, Call call) {
  const AttentionBackend backend = resolve_attention_backend(requested, q);
  if (backend == AttentionBackend::math) return call(backend);
  try {
    return call(backend);
  } catch (const c10::Error& e) {
    if (requested == AttentionBackend::automatic && backend == AttentionBackend::cudnn) {
      cudnn_refused = true;
      return call(resolve_attention_backend(requested, q));
    }
    cannot_run(backend, e.what_without_backtrace());
  }
}

}  // namespace

AttentionBackend parse_attention_backend(std::string_view name) {
  for (const NamedBackend& entry : kNames)
    if (entry.name == name) return entry.backend;
  std::string known;
  for (const std::string& n : attention_backend_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error("unknown attention backend '" + std::string(name) + "' (known: " + known + ")");
}

std::string attention_backend_name(AttentionBackend backend) {
  for (const NamedBackend& entry : kNames)
    if (entry.backend == backend) return std::string(entry.name);
  return "?";
}

std::vector<std::string> attention_backend_names() { return {"auto", "math", "native", "flash", "efficient", "cudnn"}; }

AttentionBackend resolve_attention_backend(AttentionBackend requested, const at::Tensor& q) {
  const int64_t head_dim = q.size(-1);
  if (requested == AttentionBackend::math) return requested;
#if TORCH_VERSION_MAJOR >= 2
  if (requested == AttentionBackend::automatic) {
    const bool fused_dtype = half_precision(q) || q.scalar_type() == at::kFloat;
    if (!q.is_cuda() || !fused_dtype) return AttentionBackend::math;
    const bool fits = half_precision(q) && head_dim % 8 == 0;
    if (fits && head_dim <= 128 && !cudnn_refused) return AttentionBackend::cudnn;
    if (fits && head_dim <= 256) return AttentionBackend::flash;
    return AttentionBackend::efficient;
  }
  if (!q.is_cuda()) cannot_run(requested, "it needs a CUDA tensor, not " + q.device().str());
  if ((requested == AttentionBackend::flash || requested == AttentionBackend::cudnn) && !half_precision(q))
    cannot_run(requested, std::string("it needs float16 or bfloat16, not ") + c10::toString(q.scalar_type()));
  if (requested == AttentionBackend::flash && head_dim > 256)
    cannot_run(requested, "head_dim " + std::to_string(head_dim) + " is above 256");
  return requested;
#else
  if (requested == AttentionBackend::automatic) return AttentionBackend::math;
  (void)head_dim;
  cannot_run(requested, "this libtorch (" TORCH_VERSION ") has no fused attention kernels; use math or auto");
#endif
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     AttentionBackend backend) {
  if (q.size(2) == 0 || k.size(2) == 0) return attention_with_lse(q, k, v, scale, AttentionBackend::math).out;
  return dispatch(backend, q, [&](AttentionBackend resolved) -> at::Tensor {
#if TORCH_VERSION_MAJOR >= 2
    if (resolved != AttentionBackend::math) return fused(q, k, v, scale, resolved);
#endif
    return math_attention_with_lse(q, k, v, scale).out.to(q.scalar_type());
  });
}

PartialAttention attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                    AttentionBackend backend) {
  // No keys (a rank whose shard is empty): nothing to attend to; weight 0 in any merge.
  if (k.size(2) == 0)
    return {at::zeros_like(q), at::full({q.size(0), q.size(1), q.size(2)}, -std::numeric_limits<float>::infinity(),
                                        q.options().dtype(at::kFloat))};
  if (q.size(2) == 0) return {at::empty_like(q), at::empty({q.size(0), q.size(1), 0}, q.options().dtype(at::kFloat))};
  if (backend == AttentionBackend::native) backend = AttentionBackend::automatic;  // native returns no lse
  return dispatch(backend, q, [&](AttentionBackend resolved) -> PartialAttention {
#if TORCH_VERSION_MAJOR >= 2
    if (resolved != AttentionBackend::math) return fused_with_lse(q, k, v, scale, resolved);
#endif
    return math_attention_with_lse(q, k, v, scale);
  });
}

}  // namespace diffuse
