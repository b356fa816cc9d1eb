#include "kernels/group_norm_nhwc.hpp"

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "kernels/half_convert.cuh"

namespace diffuse::kernels {
namespace {

constexpr int kMaxThreads = 1024;
constexpr int kThreadsTarget = 512;
constexpr int64_t kMinTilePositions = 32;
constexpr int64_t kMaxTiles = 128;  // per image: with batch 2 that is ~2 blocks per SM of an H100/H200
constexpr int kWarp = 32;
constexpr int kStatsWarps = 8;  // groups per block of the statistics kernel

// How the positions of one image split into tiles (one block each).
struct Tiling {
  int64_t tiles, tile_positions;
};

Tiling tiling_of(int64_t positions) {
  int64_t tiles = (positions + kMinTilePositions - 1) / kMinTilePositions;
  if (tiles > kMaxTiles) tiles = kMaxTiles;
  if (tiles < 1) tiles = 1;
  const int64_t tile_positions = (positions + tiles - 1) / tiles;
  return {(positions + tile_positions - 1) / tile_positions, tile_positions};
}

// Running statistics of a set of values: count, mean and the sum of squared differences from it.
struct Moments {
  float count, mean, m2;
};

// Chan et al.'s combination of two sets' moments (`a` takes `b` in).
__device__ void merge(Moments& a, const Moments& b) {
  if (b.count == 0.f) return;
  const float count = a.count + b.count;
  const float delta = b.mean - a.mean;
  const float share = b.count / count;
  a.mean += delta * share;
  a.m2 += b.m2 + delta * delta * a.count * share;
  a.count = count;
}

// Workspace: moments [batch, groups, tiles] then (mean, rstd) [batch, groups].
__host__ __device__ inline int64_t stats_offset(int64_t batch, int64_t groups, int64_t tiles) {
  return batch * groups * tiles * 3;
}

// The VEC values of x (+ x_bias, rounded as the separate add) at one position, as floats.
template <typename T, int VEC>
__device__ inline void load(const GroupNormNhwcArgs& a, const T* x, const float* bias, float* v) {
  const Pack<T, VEC> p = *reinterpret_cast<const Pack<T, VEC>*>(x);
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] = a.x_bias ? round_to<T>(to_float(p.v[i]) + bias[i]) : to_float(p.v[i]);
}

// Block: x over channel packs (each thread keeps its VEC channels), y over positions of the tile.
template <typename T, int VEC>
__global__ void tile_moments_kernel(GroupNormNhwcArgs a, int64_t tiles, int64_t tile_positions) {
  __shared__ Moments shared[kMaxThreads];
  const int64_t n = blockIdx.y, tile = blockIdx.x, channel = static_cast<int64_t>(threadIdx.x) * VEC;
  const int64_t begin = tile * tile_positions;
  const int64_t end = begin + tile_positions < a.positions ? begin + tile_positions : a.positions;
  const T* x = static_cast<const T*>(a.x) + n * a.positions * a.channels + channel;
  float bias[VEC] = {};
  if (a.x_bias) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) bias[i] = to_float(static_cast<const T*>(a.x_bias)[n * a.channels + channel + i]);
  }
  // Sums of (value - shift), with the thread's first value as the shift: no division per value, and no
  // cancellation when the mean is large against the spread.
  float shift = 0.f, sum = 0.f, squares = 0.f;
  int count = 0;
  for (int64_t p = begin + threadIdx.y; p < end; p += blockDim.y) {
    float v[VEC];
    load<T, VEC>(a, x + p * a.channels, bias, v);
    if (count == 0) shift = v[0];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float d = v[i] - shift;
      sum += d;
      squares += d * d;
    }
    count += VEC;
  }
  Moments m{0.f, 0.f, 0.f};
  if (count > 0) {
    const float c = static_cast<float>(count), mean_shifted = sum / c;
    m = Moments{c, shift + mean_shifted, fmaxf(squares - sum * mean_shifted, 0.f)};
  }
  shared[threadIdx.y * blockDim.x + threadIdx.x] = m;
  __syncthreads();
  // One thread per group merges the group's threads in a fixed order.
  const int thread = threadIdx.y * blockDim.x + threadIdx.x;
  const int64_t group_threads = a.channels / a.groups / VEC;
  for (int64_t g = thread; g < a.groups; g += blockDim.x * blockDim.y) {
    Moments total{0.f, 0.f, 0.f};
    for (unsigned row = 0; row < blockDim.y; ++row)
      for (int64_t i = 0; i < group_threads; ++i) merge(total, shared[row * blockDim.x + g * group_threads + i]);
    float* out = a.workspace + ((n * a.groups + g) * tiles + tile) * 3;
    out[0] = total.count, out[1] = total.mean, out[2] = total.m2;
  }
}

// One warp per (batch, group): lanes merge strided tiles, then a tree of shuffles (lane 0 ends with all).
__global__ void group_stats_kernel(GroupNormNhwcArgs a, int64_t tiles) {
  const int64_t n = blockIdx.y, g = static_cast<int64_t>(blockIdx.x) * kStatsWarps + threadIdx.y;
  if (g >= a.groups) return;
  const int lane = threadIdx.x;
  const float* in = a.workspace + (n * a.groups + g) * tiles * 3;
  Moments m{0.f, 0.f, 0.f};
  for (int64_t t = lane; t < tiles; t += kWarp) merge(m, Moments{in[3 * t], in[3 * t + 1], in[3 * t + 2]});
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const Moments other{__shfl_down_sync(0xffffffffu, m.count, offset), __shfl_down_sync(0xffffffffu, m.mean, offset),
                        __shfl_down_sync(0xffffffffu, m.m2, offset)};
    merge(m, other);
  }
  if (lane == 0) {
    float* out = a.workspace + stats_offset(a.batch, a.groups, tiles) + (n * a.groups + g) * 2;
    out[0] = m.mean;
    out[1] = rsqrtf(m.m2 / m.count + a.eps);  // biased variance, as GroupNorm
  }
}

template <typename T, int VEC>
__global__ void normalize_kernel(GroupNormNhwcArgs a, int64_t tiles, int64_t tile_positions) {
  const int64_t n = blockIdx.y, tile = blockIdx.x, channel = static_cast<int64_t>(threadIdx.x) * VEC;
  const int64_t group = channel / (a.channels / a.groups);
  const float* stats = a.workspace + stats_offset(a.batch, a.groups, tiles) + (n * a.groups + group) * 2;
  const float mean = stats[0], rstd = stats[1];
  // As PyTorch's kernel: y = x * (rstd * w) + (b - mean * rstd * w), in float32.
  float scale[VEC], shift[VEC], bias[VEC] = {};
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    scale[i] = rstd * to_float(static_cast<const T*>(a.weight)[channel + i]);
    shift[i] = fmaf(-scale[i], mean, to_float(static_cast<const T*>(a.bias)[channel + i]));
    if (a.x_bias) bias[i] = to_float(static_cast<const T*>(a.x_bias)[n * a.channels + channel + i]);
  }
  const int64_t begin = tile * tile_positions;
  const int64_t end = begin + tile_positions < a.positions ? begin + tile_positions : a.positions;
  const T* x = static_cast<const T*>(a.x) + n * a.positions * a.channels + channel;
  T* out = static_cast<T*>(a.out) + n * a.positions * a.channels + channel;
  for (int64_t p = begin + threadIdx.y; p < end; p += blockDim.y) {
    float v[VEC];
    load<T, VEC>(a, x + p * a.channels, bias, v);
    Pack<T, VEC> y;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      float r = fmaf(v[i], scale[i], shift[i]);
      if (a.silu) {
        r = round_to<T>(r);  // the norm's output is rounded first, as group_norm then silu would
        r = r / (1.f + expf(-r));
      }
      y.v[i] = from_float<T>(r);
    }
    *reinterpret_cast<Pack<T, VEC>*>(out + p * a.channels) = y;
  }
}

bool aligned(const void* p, int bytes) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The widest pack (8, 4 or 2 channels) that divides a group and fits the block and the pointers.
int pack_width(const GroupNormNhwcArgs& a) {
  const int64_t group_width = a.channels / a.groups;
  for (const int vec : {8, 4, 2}) {
    const int bytes = vec * 2;
    if (group_width % vec == 0 && a.channels / vec <= kMaxThreads && aligned(a.x, bytes) && aligned(a.out, bytes) &&
        (a.channels * 2) % bytes == 0)
      return vec;
  }
  return 0;
}

template <typename T, int VEC>
void launch(const GroupNormNhwcArgs& a, cudaStream_t stream) {
  const Tiling t = tiling_of(a.positions);
  const dim3 grid(static_cast<unsigned>(t.tiles), static_cast<unsigned>(a.batch));
  const int threads_x = static_cast<int>(a.channels / VEC);
  int rows = kThreadsTarget / threads_x;
  if (rows < 1) rows = 1;
  if (rows > t.tile_positions) rows = static_cast<int>(t.tile_positions);
  const dim3 block(threads_x, rows);
  tile_moments_kernel<T, VEC><<<grid, block, 0, stream>>>(a, t.tiles, t.tile_positions);
  const dim3 stats_grid(static_cast<unsigned>((a.groups + kStatsWarps - 1) / kStatsWarps), static_cast<unsigned>(a.batch));
  group_stats_kernel<<<stats_grid, dim3(kWarp, kStatsWarps), 0, stream>>>(a, t.tiles);
  normalize_kernel<T, VEC><<<grid, block, 0, stream>>>(a, t.tiles, t.tile_positions);
}

template <typename T>
void launch(const GroupNormNhwcArgs& a, int vec, cudaStream_t stream) {
  if (vec == 8) launch<T, 8>(a, stream);
  else if (vec == 4) launch<T, 4>(a, stream);
  else launch<T, 2>(a, stream);
}

}  // namespace

bool group_norm_nhwc_supports(int64_t channels, int64_t groups) {
  if (groups <= 0 || channels % groups != 0) return false;
  const int64_t group_width = channels / groups;
  for (const int64_t vec : {8, 4, 2})
    if (group_width % vec == 0 && channels / vec <= kMaxThreads) return true;
  return false;
}

int64_t group_norm_nhwc_workspace_floats(int64_t batch, int64_t positions, int64_t channels, int64_t groups) {
  (void)channels;
  return stats_offset(batch, groups, tiling_of(positions).tiles) + batch * groups * 2;
}

int group_norm_nhwc(const GroupNormNhwcArgs& args, void* stream) {
  if (!group_norm_nhwc_supports(args.channels, args.groups)) return static_cast<int>(cudaErrorInvalidValue);
  const int vec = pack_width(args);
  if (vec == 0) return static_cast<int>(cudaErrorMisalignedAddress);
  if (args.batch == 0 || args.positions == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args.half) launch<__half>(args, vec, s);
  else launch<__nv_bfloat16>(args, vec, s);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace diffuse::kernels
