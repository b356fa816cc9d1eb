#pragma once
// Which kernel computes attention (diffusers' set_attention_backend). The math path runs anywhere and
// is the reference; on CUDA with libtorch 2.x the fused kernels of PyTorch's scaled_dot_product_attention
// can be named one by one, each where it supports the dtype and head size:
//
//   math       scores and softmax in float32, materialized (any device, any dtype)
//   native     at::scaled_dot_product_attention, PyTorch picks the kernel (CUDA)
//   flash      FlashAttention-2 (CUDA, float16/bfloat16, head_dim <= 256)
//   efficient  memory-efficient attention (CUDA, float32 too)
//   cudnn      cuDNN's fused attention (CUDA, float16/bfloat16; the fastest on Hopper)
//   automatic  cudnn, else flash, else efficient on CUDA; math elsewhere
//
// Every backend here can also return the log-sum-exp of each query's scores, which ring attention
// needs to merge the partial outputs of K/V blocks (native cannot: it then runs as automatic).

#include <ATen/core/Tensor.h>

#include <string>
#include <string_view>
#include <vector>

#include "diffuse/parallel/partial_attention.hpp"

namespace diffuse {

enum class AttentionBackend { automatic, math, native, flash, efficient, cudnn };

// "auto", "math", "native", "flash", "efficient", "cudnn"; diffusers' names ("_native_cudnn",
// "_native_flash", "_native_efficient", "_native_math", "flash") are accepted too. Throws diffuse::Error
// listing the names for anything else.
AttentionBackend parse_attention_backend(std::string_view name);
std::string attention_backend_name(AttentionBackend backend);
std::vector<std::string> attention_backend_names();

// What `requested` runs as for q [batch, heads, q_len, head_dim] (and k/v of the same dtype and device):
// automatic resolves by device, dtype and head size. Throws diffuse::Error naming the backend and why
// when a named backend cannot run these tensors (a CUDA backend on the CPU, flash in float32, ...).
AttentionBackend resolve_attention_backend(AttentionBackend requested, const at::Tensor& q);

// softmax(q k^T * scale) v; q [batch, heads, q_len, head_dim], k and v [batch, heads, k_len, head_dim]
// -> [batch, heads, q_len, head_dim] in q's dtype.
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     AttentionBackend backend = AttentionBackend::automatic);
// The same with the log-sum-exp of each query's scores, [batch, heads, q_len] float32.
PartialAttention attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                    AttentionBackend backend = AttentionBackend::automatic);

}  // namespace diffuse
