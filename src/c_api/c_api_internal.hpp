#pragma once
// What the C API's sources share: the handles behind the opaque C types, the guard that turns every
// exception into a status and a thread-local message, and versioned-struct copying. Internal header.

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "diffuse/c_api.h"
#include "diffuse/distributed/distributed.hpp"
#include "diffuse/io/image.hpp"
#include "diffuse/pipelines/diffusion_pipeline.hpp"
#include "diffuse/version.hpp"

struct diffuse_pipeline {
  diffuse_pipeline(std::unique_ptr<diffuse::Distributed> world, std::unique_ptr<diffuse::DiffusionPipeline> loaded)
      : distributed(std::move(world)), pipe(std::move(loaded)) {}
  // The process group under context parallelism (null without): declared first, so that it outlives
  // the pipeline that uses its communicator.
  std::unique_ptr<diffuse::Distributed> distributed;
  // Any family load_pipeline builds (FluxPipeline, StableDiffusionPipeline, QwenImagePipeline).
  std::unique_ptr<diffuse::DiffusionPipeline> pipe;
  // Read from the denoiser's config at creation, so that sizes are known when the denoiser is skipped:
  // prompt_embeds' last dimension (FLUX.1 and Qwen-Image: joint_attention_dim; SD: cross_attention_dim),
  // FLUX.1's pooled_projection_dim (0 for the others) and guidance_embeds.
  int64_t embed_dim = 0;
  int64_t pooled_dim = 0;
  bool guidance_embeds = false;
  // Serializes calls on this pipeline (generate mutates the scheduler); `owner` is the thread inside,
  // so that a call from one of its own callbacks is refused instead of deadlocking.
  std::mutex mutex;
  std::atomic<std::thread::id> owner{};
  // Set by diffuse_pipeline_cancel (any thread, no lock); read after each denoising step of the
  // generate in flight, and cleared when a generate starts.
  std::atomic<bool> cancel_requested{false};
};

struct diffuse_result {
  // CPU, float32, contiguous; undefined when the call did not make them.
  at::Tensor latents;
  at::Tensor image_tensor;
  at::Tensor prompt_embeds;
  at::Tensor pooled_prompt_embeds;
  at::Tensor negative_prompt_embeds;
  at::Tensor prompt_embeds_mask;           // as float 0/1
  at::Tensor negative_prompt_embeds_mask;
  std::vector<diffuse::Image> images;
  bool interrupted = false;
  diffuse_times times{};
};

namespace diffuse::c_api {

// An error the C layer itself raises, with the status it maps to.
class CallError : public std::runtime_error {
 public:
  CallError(diffuse_status status, const std::string& message) : std::runtime_error(message), status(status) {}
  diffuse_status status;
};

[[noreturn]] inline void fail(diffuse_status status, const std::string& message) { throw CallError(status, message); }
[[noreturn]] inline void invalid(const std::string& message) { fail(DIFFUSE_ERROR_INVALID_ARGUMENT, message); }

template <typename T>
T& require(T* pointer, const char* name) {
  if (pointer == nullptr) invalid(std::string(name) + " is NULL");
  return *pointer;
}

// Records `message` as the calling thread's last error and returns `status`; never throws.
diffuse_status record_error(diffuse_status status, const char* function, const char* message) noexcept;
void clear_error() noexcept;

// Runs `body` (which returns a diffuse_status) with every exception caught and turned into a status
// and a message that starts with the C function's name.
diffuse_status map_current_exception(const char* function) noexcept;
template <typename Body>
diffuse_status guarded(const char* function, Body&& body) noexcept {
  try {
    clear_error();
    return body();
  } catch (...) {
    return map_current_exception(function);
  }
}

// Holds a pipeline for one call: refuses re-entry from the same thread, then waits for other threads.
class PipelineCall {
 public:
  explicit PipelineCall(diffuse_pipeline& pipeline);
  ~PipelineCall();
  PipelineCall(const PipelineCall&) = delete;
  PipelineCall& operator=(const PipelineCall&) = delete;

 private:
  diffuse_pipeline& pipeline_;
  std::unique_lock<std::mutex> lock_;
};

// The caller's versioned struct, copied over `defaults`: fields beyond the caller's struct_size keep
// their defaults; bytes beyond ours (a newer header) must be zero. `v1_size` is the size of the
// struct's first version, the smallest a caller can have.
template <typename T>
T read_versioned(const T* in, const T& defaults, size_t v1_size, const char* name) {
  const T& given = require(in, name);
  const size_t size = given.struct_size;
  if (size == 0)
    invalid(std::string(name) + "->struct_size is 0; set it to sizeof the struct (its _init function does)");
  if (size < v1_size)
    invalid(std::string(name) + "->struct_size " + std::to_string(size) + " is smaller than the struct's first version (" +
            std::to_string(v1_size) + " bytes)");
  const auto* bytes = reinterpret_cast<const unsigned char*>(in);
  for (size_t i = sizeof(T); i < size; ++i)
    if (bytes[i] != 0)
      invalid(std::string(name) + " sets fields that this library version (" DIFFUSE_VERSION_STRING
              ") does not know (struct_size " + std::to_string(size) + ", known " + std::to_string(sizeof(T)) + ")");
  T out = defaults;
  std::memcpy(static_cast<void*>(&out), in, std::min(size, sizeof(T)));
  out.struct_size = sizeof(T);
  return out;
}

// A C caller may pass any int where an enum is declared; C++ may not even load an enum outside its
// enumerators' range, so such a value is read as the integer it is.
template <typename Enum>
int enum_value(const Enum& value) {
  static_assert(sizeof(Enum) == sizeof(int), "C enums are ints here");
  int raw = 0;
  std::memcpy(&raw, &value, sizeof raw);
  return raw;
}

// An *_init_sized function: `defaults` into the caller's struct of `struct_size` bytes (its own sizeof),
// however that compares with this library's.
template <typename T>
void init_versioned(T* out, size_t struct_size, const T& defaults) {
  if (out == nullptr || struct_size < sizeof(size_t)) return;
  T full = defaults;
  full.struct_size = struct_size;
  std::memcpy(static_cast<void*>(out), &full, std::min(struct_size, sizeof(T)));
  // A newer caller's fields, unknown here, start as zero.
  if (struct_size > sizeof(T)) std::memset(reinterpret_cast<unsigned char*>(out) + sizeof(T), 0, struct_size - sizeof(T));
}

// Writes `full` into the caller's versioned struct, as much of it as the caller's struct_size covers.
template <typename T>
void write_versioned(T* out, const T& full, size_t v1_size, const char* name) {
  T& target = require(out, name);
  const size_t size = target.struct_size;
  if (size < v1_size)
    invalid(std::string(name) + "->struct_size " + std::to_string(size) + " is smaller than the struct's first version (" +
            std::to_string(v1_size) + " bytes); set it to sizeof the struct");
  std::memcpy(static_cast<void*>(out), &full, std::min(size, sizeof(T)));
  target.struct_size = size;
}

// The end of a struct's field: versioned structs' first-version sizes are written with it.
#define DIFFUSE_END_OF(type, field) (offsetof(type, field) + sizeof(((type*)nullptr)->field))

// ---- what differs between families (c_api_families.cpp) ---------------------------------------------
// The family's encode_prompt; throws InvalidArgumentError for a family the C API cannot encode for.
PromptEmbeddings encode_prompt(DiffusionPipeline& pipe, const EncodeRequest& request);
// The family's decode_latents: latents as generate returns them -> [B, 3, height, width] in [0, 1].
at::Tensor decode_latents(DiffusionPipeline& pipe, const at::Tensor& latents, int64_t height, int64_t width);
bool is_flux(const DiffusionPipeline& pipe);

// A copy of `count` floats of the caller's, shaped.
at::Tensor tensor_from(const float* data, at::IntArrayRef shape);
// CPU, float32, contiguous (what results hold and buffers get).
at::Tensor host_float(const at::Tensor& tensor);

}  // namespace diffuse::c_api
