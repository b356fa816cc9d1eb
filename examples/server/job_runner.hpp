#pragma once
// What runs a job: one loaded pipeline (or, under context parallelism, every rank's pipeline together).
// The job queue owns one runner per worker thread and calls it from that thread only.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "server/generation_params.hpp"

namespace diffuse::server {

// Called after every denoising step with (step done, 1-based; steps in all); false stops the call.
using StepProgress = std::function<bool(int64_t step, int64_t total)>;

struct JobOutput {
  std::vector<std::string> pngs;  // PNG files' bytes, one per image (none when cancelled)
  int64_t width = 0;
  int64_t height = 0;
  bool cancelled = false;  // the progress callback stopped it
};

class JobRunner {
 public:
  virtual ~JobRunner() = default;
  // Runs one job; throws diffuse::Error (or c10::Error) when it fails.
  virtual JobOutput run(const GenerationParams& params, const StepProgress& progress) = 0;
  // Called every few seconds while no job comes (context parallelism keeps the other ranks' waits
  // short of their timeout).
  virtual void idle() {}
  // Called once when the worker ends (the other ranks are told to stop).
  virtual void stop() {}
  // Where it runs, for /v1/models ("cpu", "cuda:1", "cuda:0 + 3 ranks").
  virtual std::string describe() const = 0;
};

}  // namespace diffuse::server
