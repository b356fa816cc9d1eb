#pragma once
// GroupNorm (optionally followed by SiLU) over channels-last activations on CUDA. PyTorch's CUDA
// group_norm makes its input NCHW-contiguous first, so a channels-last UNet would pay two layout copies
// per norm; these kernels read and write [batch, positions, channels] rows as they lie.
//
// Three launches, deterministic (no atomics, so a result is the same bits every run and in a CUDA graph):
//   1. per (batch, tile of positions, group): count, mean and M2 of the tile's values (shifted sums per
//      thread, then Chan's merge in a fixed order);
//   2. per (batch, group): one warp merges the tiles into mean and 1/sqrt(var + eps);
//   3. y = (x - mean) * rstd * weight + bias in float32, rounded to the storage type, then (with silu)
//      SiLU of that rounded value, rounded again: the same roundings as group_norm then silu in PyTorch.
// No torch headers here, so that nvcc compiles this file alone (src/kernels/group_norm_nhwc.cu).

#include <cstdint>

namespace diffuse::kernels {

struct GroupNormNhwcArgs {
  const void* x;       // [batch, positions, channels], channels contiguous; bfloat16 or float16
  const void* x_bias;  // optional [batch, channels], x's dtype: normalizes x + x_bias (rounded to x's
                       // dtype, as the separate add would), e.g. a resnet's time embedding
  const void* weight;  // [channels], x's dtype
  const void* bias;    // [channels], x's dtype
  void* out;           // like x
  float* workspace;    // group_norm_nhwc_workspace_floats(...) floats on the same device
  int64_t batch, positions, channels, groups;
  float eps;
  bool silu;
  bool half;  // float16 (else bfloat16)
};

// Channels per group even, and at most 1024 threads of 2, 4 or 8 channels each (so up to 8192 channels
// when a group's width is a multiple of 8).
bool group_norm_nhwc_supports(int64_t channels, int64_t groups);
// Floats of scratch memory the launch needs for this shape.
int64_t group_norm_nhwc_workspace_floats(int64_t batch, int64_t positions, int64_t channels, int64_t groups);
// Launches on `stream` (a cudaStream_t). Returns the CUDA error code (0: launched). Pointers need 4-byte
// alignment; wider ones get wider loads.
int group_norm_nhwc(const GroupNormNhwcArgs& args, void* stream);

}  // namespace diffuse::kernels
