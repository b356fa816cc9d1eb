#pragma once
// A Chrome trace of some calls (every CUDA kernel with its time), written with libtorch's Kineto
// profiler; scripts/trace_summary.py sums it by kind. CUDA builds with libtorch 2.x only.

#include <torch/version.h>

#if DIFFUSE_HAS_CUDA && TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/autograd/profiler_kineto.h>
#endif

#include <filesystem>
#include <functional>
#include <set>
#include <string>

#include "diffuse/error.hpp"

namespace diffuse::bench {

inline void write_trace(const std::string& path, const std::function<void()>& calls) {
#if DIFFUSE_HAS_CUDA && TORCH_VERSION_MAJOR >= 2
  namespace profiler = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const profiler::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
  profiler::prepareProfiler(config, activities);
  profiler::enableProfiler(config, activities);
  calls();
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  profiler::disableProfiler()->save(path);
#else
  (void)calls;
  throw Error("--trace needs a CUDA build with libtorch 2.x (wrote nothing to " + path + ")");
#endif
}

}  // namespace diffuse::bench
