#include "kernels/group_norm_nhwc.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace diffuse::kernels {
namespace {

// Two channels at a time, in the storage type and as floats.
template <typename T>
struct Pair;

template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  __device__ static float2 to_float(type v) { return __bfloat1622float2(v); }
  __device__ static type from_float(float2 v) { return __float22bfloat162_rn(v); }
  __device__ static float round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
};

template <>
struct Pair<__half> {
  using type = __half2;
  __device__ static float2 to_float(type v) { return __half22float2(v); }
  __device__ static type from_float(float2 v) { return __float22half2_rn(v); }
  __device__ static float round(float v) { return __half2float(__float2half_rn(v)); }
};

constexpr int kMaxThreads = 1024;
constexpr int kThreadsTarget = 512;
constexpr int64_t kMinTilePositions = 32;
constexpr int64_t kMaxTiles = 128;  // per image: with batch 2 that is ~2 blocks per SM of an H100/H200

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

// Block shape: x over channel pairs (each thread keeps its channels), y over positions of the tile.
dim3 block_of(int64_t channels, int64_t tile_positions) {
  const int pairs = static_cast<int>(channels / 2);
  int rows = kThreadsTarget / pairs;
  if (rows < 1) rows = 1;
  if (rows > tile_positions) rows = static_cast<int>(tile_positions);
  return dim3(pairs, rows);
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

__device__ void add(Moments& m, float v) {  // Welford's update
  m.count += 1.f;
  const float delta = v - m.mean;
  m.mean += delta / m.count;
  m.m2 += delta * (v - m.mean);
}

// Workspace: moments [batch, groups, tiles] then (mean, rstd) [batch, groups].
__host__ __device__ inline int64_t stats_offset(int64_t batch, int64_t groups, int64_t tiles) {
  return batch * groups * tiles * 3;
}

template <typename T>
__global__ void tile_moments_kernel(GroupNormNhwcArgs a, int64_t tiles, int64_t tile_positions) {
  using P = Pair<T>;
  __shared__ Moments shared[kMaxThreads];
  const int64_t pairs = a.channels / 2, n = blockIdx.y, tile = blockIdx.x;
  const int64_t begin = tile * tile_positions;
  const int64_t end = begin + tile_positions < a.positions ? begin + tile_positions : a.positions;
  const auto* x = reinterpret_cast<const typename P::type*>(a.x) + n * a.positions * pairs;
  Moments m{0.f, 0.f, 0.f};
  for (int64_t p = begin + threadIdx.y; p < end; p += blockDim.y) {
    const float2 v = P::to_float(x[p * pairs + threadIdx.x]);
    add(m, v.x);
    add(m, v.y);
  }
  shared[threadIdx.y * blockDim.x + threadIdx.x] = m;
  __syncthreads();
  // One thread per group merges the group's threads in a fixed order.
  const int thread = threadIdx.y * blockDim.x + threadIdx.x;
  const int64_t group_pairs = pairs / a.groups;
  if (thread < a.groups) {
    Moments total{0.f, 0.f, 0.f};
    for (unsigned row = 0; row < blockDim.y; ++row)
      for (int64_t i = 0; i < group_pairs; ++i) merge(total, shared[row * blockDim.x + thread * group_pairs + i]);
    float* out = a.workspace + ((n * a.groups + thread) * tiles + tile) * 3;
    out[0] = total.count, out[1] = total.mean, out[2] = total.m2;
  }
}

__global__ void group_stats_kernel(GroupNormNhwcArgs a, int64_t tiles) {
  const int64_t n = blockIdx.x, g = threadIdx.x;
  if (g >= a.groups) return;
  const float* in = a.workspace + (n * a.groups + g) * tiles * 3;
  Moments total{0.f, 0.f, 0.f};
  for (int64_t t = 0; t < tiles; ++t) merge(total, Moments{in[3 * t], in[3 * t + 1], in[3 * t + 2]});
  float* out = a.workspace + stats_offset(a.batch, a.groups, tiles) + (n * a.groups + g) * 2;
  out[0] = total.mean;
  out[1] = rsqrtf(total.m2 / total.count + a.eps);  // biased variance, as GroupNorm
}

template <typename T>
__global__ void normalize_kernel(GroupNormNhwcArgs a, int64_t tiles, int64_t tile_positions) {
  using P = Pair<T>;
  const int64_t pairs = a.channels / 2, n = blockIdx.y, tile = blockIdx.x, pair = threadIdx.x;
  const int64_t group = pair / (pairs / a.groups);
  const float* stats = a.workspace + stats_offset(a.batch, a.groups, tiles) + (n * a.groups + group) * 2;
  const float mean = stats[0], rstd = stats[1];
  const float2 w = P::to_float(reinterpret_cast<const typename P::type*>(a.weight)[pair]);
  const float2 b = P::to_float(reinterpret_cast<const typename P::type*>(a.bias)[pair]);
  // As PyTorch's kernel: y = x * (rstd * w) + (b - mean * rstd * w), in float32.
  const float2 scale = make_float2(rstd * w.x, rstd * w.y);
  const float2 shift = make_float2(fmaf(-scale.x, mean, b.x), fmaf(-scale.y, mean, b.y));
  const int64_t begin = tile * tile_positions;
  const int64_t end = begin + tile_positions < a.positions ? begin + tile_positions : a.positions;
  const auto* x = reinterpret_cast<const typename P::type*>(a.x) + n * a.positions * pairs;
  auto* out = reinterpret_cast<typename P::type*>(a.out) + n * a.positions * pairs;
  for (int64_t p = begin + threadIdx.y; p < end; p += blockDim.y) {
    const float2 v = P::to_float(x[p * pairs + pair]);
    float2 y = make_float2(fmaf(v.x, scale.x, shift.x), fmaf(v.y, scale.y, shift.y));
    if (a.silu) {
      // The norm's output is rounded to the storage type first, as group_norm then silu would.
      y.x = P::round(y.x), y.y = P::round(y.y);
      y.x = y.x / (1.f + expf(-y.x));
      y.y = y.y / (1.f + expf(-y.y));
    }
    out[p * pairs + pair] = P::from_float(y);
  }
}

template <typename T>
void launch(const GroupNormNhwcArgs& a, cudaStream_t stream) {
  const Tiling t = tiling_of(a.positions);
  const dim3 grid(static_cast<unsigned>(t.tiles), static_cast<unsigned>(a.batch));
  const dim3 block = block_of(a.channels, t.tile_positions);
  tile_moments_kernel<T><<<grid, block, 0, stream>>>(a, t.tiles, t.tile_positions);
  group_stats_kernel<<<static_cast<unsigned>(a.batch), static_cast<unsigned>(a.groups), 0, stream>>>(a, t.tiles);
  normalize_kernel<T><<<grid, block, 0, stream>>>(a, t.tiles, t.tile_positions);
}

}  // namespace

bool group_norm_nhwc_supports(int64_t channels, int64_t groups) {
  return groups > 0 && channels % groups == 0 && (channels / groups) % 2 == 0 && channels / 2 <= kMaxThreads;
}

int64_t group_norm_nhwc_workspace_floats(int64_t batch, int64_t positions, int64_t channels, int64_t groups) {
  (void)channels;
  return stats_offset(batch, groups, tiling_of(positions).tiles) + batch * groups * 2;
}

int group_norm_nhwc(const GroupNormNhwcArgs& args, void* stream) {
  if (!group_norm_nhwc_supports(args.channels, args.groups)) return static_cast<int>(cudaErrorInvalidValue);
  if (args.batch == 0 || args.positions == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args.half) launch<__half>(args, s);
  else launch<__nv_bfloat16>(args, s);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace diffuse::kernels
