// Built only when libtorch has CUDA (CMakeLists.txt drops cuda_*.cpp otherwise).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>

#include <mutex>

#include "placement/gpu_memory.hpp"

namespace diffuse {
namespace {

// The caching allocator exists only once CUDA is initialized, which libtorch does lazily on the first
// CUDA tensor; before that its statistics calls throw "Invalid device argument".
void initialize_cuda() {
  static std::once_flag once;
  std::call_once(once, [] { at::empty({1}, at::TensorOptions().device(c10::kCUDA, 0)); });
}

}  // namespace

uint64_t gpu_available_memory(int index) {
  initialize_cuda();
  const auto device = static_cast<c10::DeviceIndex>(index);
  const uint64_t total = at::cuda::getDeviceProperties(device)->totalGlobalMem;
  // Statistic 0 is the aggregate over pool kinds.
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
  const auto reserved = static_cast<uint64_t>(stats.reserved_bytes[0].current);
  return total > reserved ? total - reserved : 0;
}

uint64_t gpu_peak_allocated(int index) {
  initialize_cuda();
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  return static_cast<uint64_t>(stats.allocated_bytes[0].peak);
}

uint64_t gpu_allocated(int index) {
  initialize_cuda();
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  return static_cast<uint64_t>(stats.allocated_bytes[0].current);
}

void gpu_reset_peak(int index) {
  initialize_cuda();
  c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(index));
}

}  // namespace diffuse
