// Creating, inspecting and freeing pipelines through the C API.

#include <c10/util/Exception.h>

#include <concepts>
#include <filesystem>
#include <map>

#include "c_api/c_api_internal.hpp"
#include "diffuse/dtype.hpp"
#include "diffuse/error.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/models/attention_backend.hpp"
#include "diffuse/pipelines/pipeline_registry.hpp"

namespace diffuse::c_api {
namespace {

constexpr size_t kOptionsV1 = DIFFUSE_END_OF(diffuse_pipeline_options, ulysses_degree);
constexpr size_t kInfoV1 = DIFFUSE_END_OF(diffuse_pipeline_info, device);

diffuse_pipeline_options default_options() {
  diffuse_pipeline_options options;
  std::memset(&options, 0, sizeof options);
  options.struct_size = sizeof options;
  return options;
}

bool empty(const char* text) { return text == nullptr || *text == '\0'; }

// "cuda:0=16GB,cuda:1=16GB,cpu=64GB" -> {{"cuda:0", "16GB"}, ...}.
std::map<std::string, std::string> parse_max_memory(const std::string& text) {
  std::map<std::string, std::string> budgets;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::string pair = text.substr(start, end - start);
    const size_t equals = pair.find('=');
    if (equals == std::string::npos || equals == 0 || equals + 1 == pair.size())
      invalid("max_memory '" + text + "': '" + pair + "' is not DEVICE=SIZE (e.g. \"cuda:0=16GB,cpu=64GB\")");
    if (!budgets.emplace(pair.substr(0, equals), pair.substr(equals + 1)).second)
      invalid("max_memory '" + text + "' names " + pair.substr(0, equals) + " twice");
    start = end + 1;
  }
  return budgets;
}

void check_parallel_degree(int32_t degree, const char* name) {
  if (degree < 0) invalid(std::string(name) + " must be 0 or more, got " + std::to_string(degree));
}

PipelineOptions cpp_options(const diffuse_pipeline_options& o) {
  PipelineOptions options;
  if (!empty(o.dtype)) {
    try {
      options.dtype = parse_dtype(o.dtype);
    } catch (const Error& e) {
      invalid(e.what());
    }
  }
  if (!empty(o.device)) {
    try {
      (void)c10::Device(std::string(o.device));
    } catch (const c10::Error&) {
      invalid("unknown device '" + std::string(o.device) + "' (expected cpu, cuda or cuda:N)");
    }
    options.device = o.device;
  }
  if (o.skip_count > 0 && o.skip == nullptr) invalid("options->skip is NULL but skip_count is " + std::to_string(o.skip_count));
  for (size_t i = 0; i < o.skip_count; ++i) {
    if (o.skip[i] == nullptr) invalid("options->skip[" + std::to_string(i) + "] is NULL");
    options.skip.emplace_back(o.skip[i]);
  }
  if (!empty(o.device_map)) options.device_map = o.device_map;
  if (!empty(o.max_memory)) options.max_memory = parse_max_memory(o.max_memory);
  check_parallel_degree(o.ring_degree, "ring_degree");
  check_parallel_degree(o.ulysses_degree, "ulysses_degree");
  check_parallel_degree(o.cfg_degree, "cfg_degree");
  if (o.ring_degree > 1 || o.ulysses_degree > 1 || o.cfg_degree > 1)
    options.parallel_config = ParallelConfig{.cfg_degree = std::max(o.cfg_degree, 1),
                                             .ring_degree = std::max(o.ring_degree, 1),
                                             .ulysses_degree = std::max(o.ulysses_degree, 1)};
  if (!empty(o.attention_backend)) {
    try {
      parse_attention_backend(o.attention_backend);
    } catch (const Error& e) {
      invalid(e.what());
    }
    options.attention_backend = o.attention_backend;
  }
  return options;
}

void copy_name(char* target, size_t capacity, const std::string& name) {
  const size_t length = std::min(name.size(), capacity - 1);
  std::memcpy(target, name.data(), length);
  target[length] = '\0';
}

// Where the first loaded model runs ("cpu" when none is loaded).
std::string loaded_device(const DiffusionPipeline& pipe) {
  for (const std::string& name : pipe.spec().model_cpu_offload_seq)
    if (pipe.has(name)) return pipe.execution_device(name).str();
  return "cpu";
}

// prompt_embeds' width and FLUX.1's pooled width and guidance flag, from the denoiser's config (read
// from the folder, so that they are known when the denoiser is skipped).
void read_denoiser_dims(const std::filesystem::path& folder, diffuse_pipeline& p) {
  namespace fs = std::filesystem;
  if (fs::exists(folder / "transformer" / "config.json")) {
    const JsonConfig config = JsonConfig::load(folder / "transformer" / "config.json");
    p.embed_dim = config.get_int("joint_attention_dim", 0);
    p.pooled_dim = config.get_int("pooled_projection_dim", 0);
    p.guidance_embeds = config.get_bool("guidance_embeds", false);
  } else if (fs::exists(folder / "unet" / "config.json")) {
    const JsonConfig config = JsonConfig::load(folder / "unet" / "config.json");
    p.embed_dim = config.get_int("cross_attention_dim", 0);
  }
}

}  // namespace

PipelineCall::PipelineCall(diffuse_pipeline& pipeline) : pipeline_(pipeline) {
  if (pipeline.owner.load() == std::this_thread::get_id())
    invalid("called from inside a callback of a call that is running on the same pipeline; "
            "callbacks must not call into their own pipeline");
  lock_ = std::unique_lock<std::mutex>(pipeline.mutex);
  pipeline.owner.store(std::this_thread::get_id());
}

PipelineCall::~PipelineCall() { pipeline_.owner.store(std::thread::id()); }

}  // namespace diffuse::c_api

using namespace diffuse::c_api;

extern "C" {

void diffuse_pipeline_options_init_sized(diffuse_pipeline_options* options, size_t struct_size) {
  init_versioned(options, struct_size, default_options());
}

diffuse_status diffuse_pipeline_create(const char* folder, const diffuse_pipeline_options* options,
                                       diffuse_pipeline** out) {
  if (out != nullptr) *out = nullptr;
  return guarded("diffuse_pipeline_create", [&] {
    require(out, "out");
    require(folder, "folder");
    if (*folder == '\0') invalid("folder is empty");
    const diffuse_pipeline_options o =
        options == nullptr ? default_options() : read_versioned(options, default_options(), kOptionsV1, "options");
    diffuse::PipelineOptions cpp = cpp_options(o);

    namespace fs = std::filesystem;
    const fs::path path(folder);
    if (!fs::is_directory(path)) fail(DIFFUSE_ERROR_NOT_FOUND, "'" + path.string() + "' is not a folder");
    if (!fs::exists(path / "model_index.json"))
      fail(DIFFUSE_ERROR_NOT_FOUND, "'" + path.string() + "' has no model_index.json (not a diffusers pipeline folder)");

    // Parallelism (cfg, ring, Ulysses): this process is one rank of the world its launcher describes; "cuda" means
    // this rank's GPU.
    std::unique_ptr<diffuse::Distributed> world;
    if (cpp.parallel_config) {
      try {
        world = std::make_unique<diffuse::Distributed>(diffuse::Distributed::init());
      } catch (const diffuse::Error& e) {
        fail(DIFFUSE_ERROR_DISTRIBUTED, e.what());
      }
      if (cpp.device == "cuda" && world->device().is_cuda()) cpp.device = world->device().str();
      cpp.parallel_world = world->shared_communicator();
    }
    auto pipeline =
        std::make_unique<diffuse_pipeline>(std::move(world), diffuse::load_pipeline(path, std::move(cpp)));
    read_denoiser_dims(path, *pipeline);
    *out = pipeline.release();
    return DIFFUSE_OK;
  });
}

void diffuse_pipeline_free(diffuse_pipeline* pipeline) { delete pipeline; }

diffuse_status diffuse_pipeline_cancel(diffuse_pipeline* pipeline) {
  return guarded("diffuse_pipeline_cancel", [&] {
    require(pipeline, "pipeline").cancel_requested.store(true);
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_pipeline_get_info(diffuse_pipeline* pipeline, diffuse_pipeline_info* info) {
  return guarded("diffuse_pipeline_get_info", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    require(info, "info");
    PipelineCall call(p);
    diffuse_pipeline_info full;
    std::memset(&full, 0, sizeof full);
    full.struct_size = sizeof full;
    const diffuse::PipelineInfo family = p.pipe->info();
    full.vae_scale_factor = family.vae_scale_factor;
    full.num_channels_latents = family.num_channels_latents;
    full.joint_attention_dim = p.embed_dim;
    full.pooled_projection_dim = p.pooled_dim;
    full.default_height = family.default_height;
    full.default_width = family.default_width;
    full.guidance_embeds = p.guidance_embeds ? 1 : 0;
    copy_name(full.dtype, sizeof full.dtype, diffuse::dtype_name(p.pipe->dtype()));
    copy_name(full.device, sizeof full.device, loaded_device(*p.pipe));
    full.parallel_rank = p.pipe->parallel_rank();
    full.parallel_world_size = p.distributed ? p.distributed->world_size() : 1;
    copy_name(full.class_name, sizeof full.class_name, family.class_name);
    full.size_multiple = family.size_multiple;
    full.default_steps = family.default_steps;
    full.default_guidance_scale = family.default_guidance_scale;
    full.packed_latents = family.packed_latents ? 1 : 0;
    full.uses_negative_prompt = family.uses_negative_prompt ? 1 : 0;
    copy_name(full.scheduler, sizeof full.scheduler, family.scheduler);
    write_versioned(info, full, kInfoV1, "info");
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_pipeline_has(diffuse_pipeline* pipeline, const char* component, int* loaded) {
  return guarded("diffuse_pipeline_has", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    require(component, "component");
    int& result = require(loaded, "loaded");
    PipelineCall call(p);
    try {
      result = p.pipe->has(component) ? 1 : 0;
    } catch (const diffuse::Error& e) {
      invalid(e.what());
    }
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_pipeline_release(diffuse_pipeline* pipeline, const char* component) {
  return guarded("diffuse_pipeline_release", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    require(component, "component");
    PipelineCall call(p);
    try {
      p.pipe->release(component);
    } catch (const diffuse::Error& e) {
      invalid(e.what());
    }
    return DIFFUSE_OK;
  });
}

}  // extern "C"
