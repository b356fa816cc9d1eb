#pragma once
// Milliseconds of one call, alone: the device is synchronized first, then the call is timed with CUDA
// events on a GPU (the kernels' time, not the launches') or with the wall clock on the CPU.

#include <c10/core/Device.h>

#if DIFFUSE_HAS_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <chrono>
#include <functional>

namespace diffuse::bench {

inline double time_call_ms(const std::function<void()>& call, c10::Device device) {
#if DIFFUSE_HAS_CUDA
  if (device.is_cuda()) {
    c10::cuda::device_synchronize();
    at::cuda::CUDAEvent start(cudaEventDefault), end(cudaEventDefault);
    start.record();
    call();
    end.record();
    end.synchronize();
    return static_cast<double>(start.elapsed_time(end));
  }
#endif
  const auto start = std::chrono::steady_clock::now();
  call();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace diffuse::bench
