#pragma once
// What every family's generate does the same way: timing, request checks, the noise generator.
// Internal header.

#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "diffuse/pipelines/generate_request.hpp"

namespace diffuse {

class Communicator;

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Repeats each row `times` times, keeping rows of one prompt together ([p0, p0, p1, p1]), as
// diffusers' repeat + view does.
inline at::Tensor repeat_rows(const at::Tensor& t, int64_t times) {
  return times == 1 || !t.defined() ? t : t.repeat_interleave(times, 0);
}

// An image side: `value` or `fallback`, at least `multiple`, at most 16384, and a multiple of
// `multiple` — or, with `round`, rounded down to one with a warning, as diffusers does.
int64_t checked_image_size(std::optional<int64_t> value, int64_t fallback, int64_t multiple, bool round,
                           const char* name);

// The checks every call makes before any model runs: prompts or embeddings (not both, not neither),
// num_images_per_prompt and the step count.
void check_common_request(const GenerateRequest& request, int64_t num_inference_steps);

// The generator the initial noise (and any per-step noise) comes from: the request's, else a CPU
// generator seeded with its seed, else with a random seed (under a parallel world, rank 0's, so that
// every rank starts from the same noise).
at::Generator request_generator(const GenerateRequest& request, const std::shared_ptr<Communicator>& world);

}  // namespace diffuse
