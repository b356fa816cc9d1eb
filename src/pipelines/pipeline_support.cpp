#include "pipeline_support.hpp"

#include <random>

#include "diffuse/distributed/communicator.hpp"
#include "diffuse/error.hpp"
#include "diffuse/pipelines/flux_latents.hpp"
#include "log.hpp"

namespace diffuse {

int64_t checked_image_size(std::optional<int64_t> value, int64_t fallback, int64_t multiple, bool round,
                           const char* name) {
  const int64_t size = value.value_or(fallback);
  if (size < multiple)
    throw Error(std::string(name) + " must be at least " + std::to_string(multiple) + ", got " + std::to_string(size));
  if (size > 16384) throw Error(std::string(name) + " " + std::to_string(size) + " is over the 16384 limit");
  if (size % multiple == 0) return size;
  const int64_t rounded = size / multiple * multiple;
  if (!round)
    throw Error(std::string(name) + " " + std::to_string(size) + " is not a multiple of " + std::to_string(multiple) +
                "; use " + std::to_string(rounded) + " or " + std::to_string(rounded + multiple) +
                ", or set round_size to round down as diffusers does");
  DIFFUSE_LOG_WARN("{} {} is not a multiple of {}; it is rounded down to {}", name, size, multiple, rounded);
  return rounded;
}

void check_common_request(const GenerateRequest& request, int64_t num_inference_steps) {
  const bool has_prompt = !request.prompt.empty();
  const bool has_embeds = request.prompt_embeds.defined();
  if (has_prompt && has_embeds) throw Error("give either prompt or prompt_embeds, not both");
  if (!has_prompt && !has_embeds) throw Error("give a prompt (or prompt_embeds)");
  if (!request.negative_prompt.empty() && request.negative_prompt_embeds.defined())
    throw Error("give either negative_prompt or negative_prompt_embeds, not both");
  if (request.num_images_per_prompt < 1)
    throw Error("num_images_per_prompt must be at least 1, got " + std::to_string(request.num_images_per_prompt));
  if (num_inference_steps < 1 && !request.sigmas)
    throw Error("num_inference_steps must be at least 1, got " + std::to_string(num_inference_steps));
  if (num_inference_steps > 10000)
    throw Error("num_inference_steps " + std::to_string(num_inference_steps) + " is over the 10000 limit");
  if (request.sigmas && request.sigmas->empty()) throw Error("sigmas must not be empty");
}

at::Generator request_generator(const GenerateRequest& request, const std::shared_ptr<Communicator>& world) {
  if (request.generator) return *request.generator;
  if (request.seed) return cpu_generator(*request.seed);
  uint64_t seed = (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
  if (world) {
    // Every rank of a parallel call must start from the same noise: rank 0's seed.
    at::Tensor shared = at::full({1}, static_cast<int64_t>(seed >> 1), at::TensorOptions(at::kLong));
    seed = static_cast<uint64_t>(world->broadcast(shared.to(world->device()), /*root=*/0).cpu().item<int64_t>());
  }
  return cpu_generator(seed);
}

}  // namespace diffuse
