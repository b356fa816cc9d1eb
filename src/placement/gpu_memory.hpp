#pragma once
// GPU memory queries, from src/placement/cuda_gpu_memory.cpp in CUDA builds (device_memory.cpp has the
// stand-ins for builds without). Internal header.

#include <cstdint>

namespace diffuse {

uint64_t gpu_available_memory(int index);  // total less what libtorch's allocator reserved
uint64_t gpu_peak_allocated(int index);    // peak bytes allocated for tensors since the last reset
uint64_t gpu_allocated(int index);         // bytes allocated for tensors now
void gpu_reset_peak(int index);

}  // namespace diffuse
