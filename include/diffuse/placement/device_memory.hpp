#pragma once
// What the devices have: the default budgets when max_memory is not given, and the peak memory a run
// used (as torch.cuda.max_memory_allocated). Without CUDA, GPUs are absent and peaks are 0.

#include <c10/core/Device.h>

#include <cstdint>

#include "diffuse/placement/memory_size.hpp"

namespace diffuse {

// GPUs libtorch sees (0 without CUDA).
int gpu_count();

// Bytes a device can take now: a GPU's memory less what libtorch holds there already; the CPU's
// available memory (MemAvailable). Throws diffuse::Error for "disk" or an absent GPU.
uint64_t available_memory(const std::string& device);

// max_memory parsed, or when it is empty Accelerate's default: every GPU's available memory (90% of it
// when there is one GPU, leaving room for activations) and the CPU's.
MemoryBudget get_max_memory(const MaxMemory& max_memory);

// The most bytes libtorch's allocator held for tensors on `device` since the last reset (CUDA only;
// 0 for the CPU).
uint64_t peak_memory_allocated(c10::Device device);
void reset_peak_memory(c10::Device device);
// The bytes libtorch's allocator holds for tensors on `device` now (torch.cuda.memory_allocated; CUDA
// only, 0 for the CPU).
uint64_t memory_allocated(c10::Device device);

}  // namespace diffuse
