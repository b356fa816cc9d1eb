#include "diffuse/placement/device_memory.hpp"

#include <torch/cuda.h>

#include <fstream>
#include <sstream>

#include "diffuse/error.hpp"
#include "placement/gpu_memory.hpp"

namespace diffuse {
namespace {

uint64_t cpu_available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kilobytes = 0;
  std::string unit;
  while (meminfo >> key >> kilobytes >> unit)
    if (key == "MemAvailable:") return kilobytes * 1024;
  throw Error("cannot read the CPU's available memory from /proc/meminfo; give max_memory[\"cpu\"]");
}

}  // namespace

int gpu_count() { return static_cast<int>(torch::cuda::device_count()); }

uint64_t available_memory(const std::string& device) {
  const std::string canonical = canonical_device(device);
  if (canonical == "cpu") return cpu_available_memory();
  if (canonical == "disk") throw Error("the disk has no memory budget of its own; give max_memory[\"disk\"]");
  const int index = std::stoi(canonical.substr(5));
  if (index >= gpu_count())
    throw Error(canonical + " is not present: libtorch sees " + std::to_string(gpu_count()) + " GPU(s)");
  return gpu_available_memory(index);
}

MemoryBudget get_max_memory(const MaxMemory& max_memory) {
  if (!max_memory.empty()) return parse_max_memory(max_memory);
  MemoryBudget budget;
  const int gpus = gpu_count();
  for (int i = 0; i < gpus; ++i) {
    const uint64_t bytes = gpu_available_memory(i);
    budget.emplace_back("cuda:" + std::to_string(i), gpus == 1 ? bytes / 10 * 9 : bytes);
  }
  budget.emplace_back("cpu", cpu_available_memory());
  return budget;
}

uint64_t peak_memory_allocated(c10::Device device) {
  return device.is_cuda() ? gpu_peak_allocated(device.has_index() ? device.index() : 0) : 0;
}

void reset_peak_memory(c10::Device device) {
  if (device.is_cuda()) gpu_reset_peak(device.has_index() ? device.index() : 0);
}

uint64_t memory_allocated(c10::Device device) {
  return device.is_cuda() ? gpu_allocated(device.has_index() ? device.index() : 0) : 0;
}

#if !DIFFUSE_HAS_CUDA
// Without CUDA no GPU is ever present (gpu_count() is 0), so these are never reached with one.
uint64_t gpu_available_memory(int index) { throw Error("this build of diffuse has no CUDA"); }
uint64_t gpu_peak_allocated(int) { return 0; }
uint64_t gpu_allocated(int) { return 0; }
void gpu_reset_peak(int) {}
#endif

}  // namespace diffuse
