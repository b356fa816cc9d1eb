// encode / generate / decode through the C API: requests checked and turned into the C++ API's, run
// under the pipeline's lock, and their outputs returned as results or copied into caller buffers.

#include <ATen/ATen.h>

#include <chrono>

#include "c_api/c_api_internal.hpp"

namespace diffuse::c_api {
namespace {

// The first versions' ends: a caller's struct may be as small as these (later fields keep defaults).
constexpr size_t kEncodeRequestV1 = DIFFUSE_END_OF(diffuse_encode_request, max_sequence_length);
constexpr size_t kGenerateRequestV1 = DIFFUSE_END_OF(diffuse_generate_request, progress_bar);
constexpr size_t kSizesV1 = DIFFUSE_END_OF(diffuse_sizes, pooled_prompt_embeds_count);
constexpr size_t kBuffersV1 = DIFFUSE_END_OF(diffuse_buffers, pooled_prompt_embeds_count);

template <typename T>
T zeroed() {
  T value;
  std::memset(static_cast<void*>(&value), 0, sizeof value);
  value.struct_size = sizeof value;
  return value;
}

diffuse_encode_request default_encode_request() {
  auto request = zeroed<diffuse_encode_request>();
  request.num_images_per_prompt = 1;
  request.max_sequence_length = 512;
  return request;
}

diffuse_generate_request default_generate_request() {
  auto request = zeroed<diffuse_generate_request>();
  request.num_images_per_prompt = 1;
  request.num_inference_steps = 0;  // the family's
  request.guidance_scale = -1;      // the family's
  request.max_sequence_length = 512;
  request.output_type = DIFFUSE_OUTPUT_IMAGE;
  request.true_cfg_scale = -1;      // the family's
  return request;
}

std::string count_text(size_t count) { return std::to_string(count); }

std::vector<std::string> prompt_list(const char* const* prompts, size_t count, const std::string& name) {
  if (count > 0 && prompts == nullptr) invalid(name + " is NULL but its count is " + count_text(count));
  std::vector<std::string> list;
  for (size_t i = 0; i < count; ++i) {
    if (prompts[i] == nullptr) invalid(name + "[" + count_text(i) + "] is NULL");
    list.emplace_back(prompts[i]);
  }
  return list;
}

// The family's limit on max_sequence_length: Qwen-Image's templated text runs to 1024 tokens, FLUX.1's
// T5 to 512 (SD does not read it).
int64_t max_sequence_limit(const DiffusionPipeline& pipe) {
  return pipe.class_name() == "QwenImagePipeline" ? 1024 : 512;
}

void check_common(const DiffusionPipeline& pipe, int64_t num_images_per_prompt, int64_t max_sequence_length) {
  if (num_images_per_prompt < 1)
    invalid("num_images_per_prompt must be at least 1, got " + std::to_string(num_images_per_prompt));
  const int64_t limit = max_sequence_limit(pipe);
  if (max_sequence_length < 1 || max_sequence_length > limit)
    invalid("max_sequence_length must be in [1, " + std::to_string(limit) + "], got " +
            std::to_string(max_sequence_length));
}

// The family's size rule, checked before any work so that sizes can be reported.
int64_t image_size(int64_t value, int64_t fallback, int64_t multiple, bool round, const char* name) {
  const int64_t size = value == 0 ? fallback : value;
  if (size < multiple)
    invalid(std::string(name) + " must be at least " + std::to_string(multiple) + ", got " + std::to_string(size));
  if (size > 16384) invalid(std::string(name) + " " + std::to_string(size) + " is over the 16384 limit");
  if (size % multiple == 0) return size;
  const int64_t rounded = size / multiple * multiple;
  if (!round)
    invalid(std::string(name) + " " + std::to_string(size) + " is not a multiple of " + std::to_string(multiple) +
            " (the family's size multiple); use " + std::to_string(rounded) + " or " + std::to_string(rounded + multiple) +
            ", or set round_size");
  return rounded;
}

std::string shape_text(const diffuse_sizes& s) {
  std::string text = "[";
  for (int32_t d = 0; d < s.latents_ndim; ++d) text += (d == 0 ? "" : ", ") + std::to_string(s.latents_shape[d]);
  return text + "]";
}
std::string latents_name(const diffuse_sizes& s) { return s.latents_ndim == 3 ? "packed latents " : "latents "; }

// The image and latent parts of `sizes` for batch images of height x width, in the family's layout.
void image_sizes(const diffuse_pipeline& p, int64_t batch, int64_t height, int64_t width, diffuse_sizes& sizes) {
  const PipelineInfo info = p.pipe->info();
  sizes.batch = batch;
  sizes.height = height;
  sizes.width = width;
  if (info.packed_latents) {
    const int64_t patch = info.vae_scale_factor * 2;
    sizes.latent_tokens = (height / patch) * (width / patch);
    sizes.latent_channels = info.num_channels_latents * 4;
    sizes.latents_ndim = 3;
    sizes.latents_shape[0] = batch;
    sizes.latents_shape[1] = sizes.latent_tokens;
    sizes.latents_shape[2] = sizes.latent_channels;
  } else {
    const int64_t h = height / info.vae_scale_factor, w = width / info.vae_scale_factor;
    sizes.latent_tokens = h * w;
    sizes.latent_channels = info.num_channels_latents;
    sizes.latents_ndim = 4;
    sizes.latents_shape[0] = batch;
    sizes.latents_shape[1] = info.num_channels_latents;
    sizes.latents_shape[2] = h;
    sizes.latents_shape[3] = w;
  }
  sizes.latents_count = static_cast<size_t>(batch * sizes.latent_tokens * sizes.latent_channels);
  sizes.image_bytes = static_cast<size_t>(batch * height * width * 3);
  sizes.image_tensor_count = sizes.image_bytes;
  sizes.joint_attention_dim = p.embed_dim;
  sizes.pooled_projection_dim = p.pooled_dim;
}

at::IntArrayRef latents_shape(const diffuse_sizes& s) { return at::IntArrayRef(s.latents_shape, s.latents_ndim); }

// A float 0/1 copy of an int64 mask, for result views (undefined stays undefined).
at::Tensor float_mask(const at::Tensor& mask) { return mask.defined() ? host_float(mask) : at::Tensor(); }

// ---- plans: the C++ request and the sizes of its outputs -------------------------------------------

struct EncodePlan {
  EncodeRequest request;
  int64_t batch = 0;
};

EncodePlan plan_encode(diffuse_pipeline& p, const diffuse_encode_request& r) {
  EncodePlan plan;
  std::vector<std::string> prompts = prompt_list(r.prompts, r.prompt_count, "request->prompts");
  if (prompts.empty()) invalid("request->prompts is empty: give at least one prompt");
  std::vector<std::string> prompts_2 = prompt_list(r.prompts_2, r.prompt_2_count, "request->prompts_2");
  if (!prompts_2.empty() && prompts_2.size() != prompts.size())
    invalid("request has " + count_text(prompts.size()) + " prompts but " + count_text(prompts_2.size()) + " prompts_2");
  std::vector<std::string> negative = prompt_list(r.negative_prompts, r.negative_prompt_count, "request->negative_prompts");
  check_common(*p.pipe, r.num_images_per_prompt, r.max_sequence_length);
  plan.batch = static_cast<int64_t>(prompts.size()) * r.num_images_per_prompt;
  plan.request.prompt = std::move(prompts);
  plan.request.prompt_2 = std::move(prompts_2);
  plan.request.negative_prompt = std::move(negative);
  plan.request.do_classifier_free_guidance = r.do_classifier_free_guidance != 0;
  plan.request.num_images_per_prompt = r.num_images_per_prompt;
  plan.request.max_sequence_length = r.max_sequence_length;
  return plan;
}

// FLUX.1's encode sizes (the T5 sequence is max_sequence_length whatever the prompts).
diffuse_sizes flux_encode_sizes(diffuse_pipeline& p, const EncodePlan& plan, const char* function) {
  if (!is_flux(*p.pipe))
    invalid(std::string(function) + " is FLUX.1's: " + p.pipe->class_name() +
            "'s embeddings are as long as its prompts; use diffuse_encode");
  diffuse_sizes s = zeroed<diffuse_sizes>();
  s.batch = plan.batch;
  s.sequence_length = plan.request.max_sequence_length;
  s.joint_attention_dim = p.embed_dim;
  s.pooled_projection_dim = p.pooled_dim;
  s.prompt_embeds_count = static_cast<size_t>(s.batch * s.sequence_length * s.joint_attention_dim);
  s.pooled_prompt_embeds_count = static_cast<size_t>(s.batch * s.pooled_projection_dim);
  return s;
}

struct GeneratePlan {
  GenerateRequest request;
  diffuse_sizes sizes = zeroed<diffuse_sizes>();
};

at::Tensor mask_from(const int64_t* data, int64_t rows, int64_t length) {
  return at::from_blob(const_cast<int64_t*>(data), {rows, length}, at::kLong).clone();
}

GeneratePlan plan_generate(diffuse_pipeline& p, const diffuse_generate_request& r) {
  GeneratePlan plan;
  GenerateRequest& request = plan.request;
  const PipelineInfo info = p.pipe->info();
  std::vector<std::string> prompts = prompt_list(r.prompts, r.prompt_count, "request->prompts");
  std::vector<std::string> prompts_2 = prompt_list(r.prompts_2, r.prompt_2_count, "request->prompts_2");
  std::vector<std::string> negative = prompt_list(r.negative_prompts, r.negative_prompt_count, "request->negative_prompts");
  const bool has_embeds = r.prompt_embeds != nullptr || r.pooled_prompt_embeds != nullptr ||
                          r.negative_prompt_embeds != nullptr || r.prompt_embeds_mask != nullptr ||
                          r.negative_prompt_embeds_mask != nullptr;
  if (!prompts.empty() && has_embeds) invalid("give either prompts or prompt_embeds, not both");
  if (prompts.empty() && !has_embeds) invalid("give prompts (or prompt_embeds and pooled_prompt_embeds)");
  if (!prompts_2.empty() && prompts_2.size() != prompts.size())
    invalid("request has " + count_text(prompts.size()) + " prompts but " + count_text(prompts_2.size()) + " prompts_2");
  check_common(*p.pipe, r.num_images_per_prompt, r.max_sequence_length);
  if (r.num_inference_steps < 0)
    invalid("num_inference_steps must be at least 1 (or 0 for the family's default), got " +
            std::to_string(r.num_inference_steps));
  if (const int type = enum_value(r.output_type); type < DIFFUSE_OUTPUT_IMAGE || type > DIFFUSE_OUTPUT_TENSOR)
    invalid("unknown output_type " + std::to_string(type));

  int64_t rows = static_cast<int64_t>(prompts.size());
  if (has_embeds) {
    if (r.prompt_embeds == nullptr) invalid("negative embeddings, masks and pooled_prompt_embeds need prompt_embeds");
    if (p.pooled_dim > 0 && r.pooled_prompt_embeds == nullptr)
      invalid("prompt_embeds and pooled_prompt_embeds go together: give both");
    if (r.embeds_batch < 1 || r.embeds_sequence_length < 1)
      invalid("embeds_batch and embeds_sequence_length must be at least 1, got " + std::to_string(r.embeds_batch) +
              " and " + std::to_string(r.embeds_sequence_length));
    if (r.negative_embeds_sequence_length < 0)
      invalid("negative_embeds_sequence_length must be 0 or more, got " + std::to_string(r.negative_embeds_sequence_length));
    const int64_t negative_length =
        r.negative_embeds_sequence_length == 0 ? r.embeds_sequence_length : r.negative_embeds_sequence_length;
    rows = r.embeds_batch;
    request.prompt_embeds = tensor_from(r.prompt_embeds, {rows, r.embeds_sequence_length, p.embed_dim});
    if (r.pooled_prompt_embeds != nullptr) {
      if (p.pooled_dim < 1) invalid(p.pipe->class_name() + " takes no pooled_prompt_embeds");
      request.pooled_prompt_embeds = tensor_from(r.pooled_prompt_embeds, {rows, p.pooled_dim});
    }
    if (r.negative_prompt_embeds != nullptr)
      request.negative_prompt_embeds = tensor_from(r.negative_prompt_embeds, {rows, negative_length, p.embed_dim});
    if (r.prompt_embeds_mask != nullptr)
      request.prompt_embeds_mask = mask_from(r.prompt_embeds_mask, rows, r.embeds_sequence_length);
    if (r.negative_prompt_embeds_mask != nullptr) {
      if (r.negative_prompt_embeds == nullptr) invalid("negative_prompt_embeds_mask needs negative_prompt_embeds");
      request.negative_prompt_embeds_mask = mask_from(r.negative_prompt_embeds_mask, rows, negative_length);
    }
  }
  request.prompt = std::move(prompts);
  request.prompt_2 = std::move(prompts_2);
  request.negative_prompt = std::move(negative);

  const int64_t multiple = info.size_multiple;
  const int64_t height = image_size(r.height, info.default_height, multiple, r.round_size != 0, "height");
  const int64_t width = image_size(r.width, info.default_width, multiple, r.round_size != 0, "width");
  diffuse_sizes& s = plan.sizes;
  image_sizes(p, rows * r.num_images_per_prompt, height, width, s);
  s.sequence_length = has_embeds ? r.embeds_sequence_length : r.max_sequence_length;
  if (r.output_type != DIFFUSE_OUTPUT_IMAGE) s.image_bytes = 0;
  if (r.output_type == DIFFUSE_OUTPUT_LATENT) s.image_tensor_count = 0;

  if (r.latents != nullptr) {
    if (r.latents_count != s.latents_count)
      invalid("latents_count is " + count_text(r.latents_count) + " but this request's " + latents_name(s) +
              shape_text(s) + " are " + count_text(s.latents_count) + " floats");
    request.latents = tensor_from(r.latents, latents_shape(s));
  }
  request.num_images_per_prompt = r.num_images_per_prompt;
  request.height = r.height == 0 ? info.default_height : r.height;
  request.width = r.width == 0 ? info.default_width : r.width;
  request.round_size = r.round_size != 0;
  if (r.num_inference_steps > 0) request.num_inference_steps = r.num_inference_steps;
  if (r.guidance_scale >= 0) request.guidance_scale = r.guidance_scale;  // NaN and negatives: the family's
  if (r.true_cfg_scale >= 0) request.true_cfg_scale = r.true_cfg_scale;
  if (r.has_seed != 0) request.seed = r.seed;
  request.max_sequence_length = r.max_sequence_length;
  request.output_type = r.output_type == DIFFUSE_OUTPUT_LATENT  ? OutputType::Latent
                        : r.output_type == DIFFUSE_OUTPUT_TENSOR ? OutputType::Tensor
                                                                 : OutputType::Image;
  request.progress = r.progress_bar != 0;
  // Always a callback: it is where diffuse_pipeline_cancel is seen, after each step.
  request.callback = [callback = r.progress, user_data = r.progress_user_data, with_latents = r.progress_latents != 0,
                      pipeline = &p](const StepInfo& step) {
    bool go_on = true;
    if (callback != nullptr) {
      diffuse_step_info info{};
      info.step = step.step;
      info.num_steps = step.num_steps;
      info.timestep = step.timestep;
      at::Tensor latents;
      if (with_latents) {
        latents = host_float(step.latents);
        info.latents = latents.data_ptr<float>();
        // diffuse_step_info is frozen at three dimensions: SD's [B, C, h, w] are given as [B, C, h * w].
        if (latents.dim() == 4) latents = latents.flatten(2);
        for (int64_t d = 0; d < 3 && d < latents.dim(); ++d) info.latents_shape[d] = latents.size(d);
      }
      go_on = callback(user_data, &info) == DIFFUSE_CONTINUE;
    }
    return go_on && !pipeline->cancel_requested.load();
  };
  return plan;
}

// The request's scheduler, swapped in before the call (an unknown name is the caller's to fix).
void apply_scheduler(diffuse_pipeline& p, const diffuse_generate_request& r) {
  if (r.scheduler == nullptr || *r.scheduler == '\0') return;
  try {
    p.pipe->set_scheduler(r.scheduler);
  } catch (const diffuse::Error& e) {
    invalid(e.what());
  }
}

// Runs the generate: a cancel that stopped its loop is DIFFUSE_ERROR_CANCELLED, not a result.
GenerateOutput run_generate(diffuse_pipeline& p, const diffuse_generate_request& r, const GeneratePlan& plan) {
  apply_scheduler(p, r);
  p.cancel_requested.store(false);
  GenerateOutput out = p.pipe->generate(plan.request);
  if (out.interrupted && p.cancel_requested.load())
    fail(DIFFUSE_ERROR_CANCELLED, "cancelled by diffuse_pipeline_cancel (the denoising loop stopped after the "
                                  "step it was in)");
  return out;
}

struct DecodePlan {
  at::Tensor latents;
  diffuse_sizes sizes = zeroed<diffuse_sizes>();
};

DecodePlan plan_decode(diffuse_pipeline& p, const float* latents, size_t latents_count, int64_t batch, int64_t height,
                       int64_t width, bool need_latents) {
  DecodePlan plan;
  if (batch < 1) invalid("batch must be at least 1, got " + std::to_string(batch));
  const int64_t multiple = p.pipe->info().size_multiple;
  image_sizes(p, batch, image_size(height, 0, multiple, false, "height"), image_size(width, 0, multiple, false, "width"),
              plan.sizes);
  const diffuse_sizes& s = plan.sizes;
  if (!need_latents) return plan;
  require(latents, "latents");
  if (latents_count != s.latents_count)
    invalid("latents_count is " + count_text(latents_count) + " but " + latents_name(s) + shape_text(s) + " of " +
            std::to_string(height) + "x" + std::to_string(width) + " images are " + count_text(s.latents_count) +
            " floats");
  plan.latents = tensor_from(latents, latents_shape(s));
  return plan;
}

// ---- outputs ------------------------------------------------------------------------------------

// What a call can write into caller buffers.
struct Writable {
  bool latents = false;
  bool images = false;
  bool image_tensor = false;
  bool embeddings = false;
  const char* why_not = "";  // appended to the message for a buffer the call cannot fill
};

void check_buffers(const diffuse_buffers& b, const diffuse_sizes& s, const Writable& can) {
  int given = 0;
  auto check = [&](const void* data, size_t count, size_t needed, bool writable, const char* name, const char* unit) {
    if (data == nullptr) return;
    ++given;
    if (!writable || needed == 0)
      invalid(std::string("this call does not write buffers->") + name + can.why_not + "; set it to NULL");
    if (count < needed)
      fail(DIFFUSE_ERROR_BUFFER_TOO_SMALL, std::string("buffers->") + name + " holds " + count_text(count) + " " + unit +
                                               " but this call writes " + count_text(needed) +
                                               " (the diffuse_*_sizes functions give it)");
  };
  check(b.latents, b.latents_count, s.latents_count, can.latents, "latents", "floats");
  check(b.images, b.image_bytes, s.image_bytes, can.images, "images", "bytes");
  check(b.image_tensor, b.image_tensor_count, s.image_tensor_count, can.image_tensor, "image_tensor", "floats");
  check(b.prompt_embeds, b.prompt_embeds_count, s.prompt_embeds_count, can.embeddings, "prompt_embeds", "floats");
  check(b.pooled_prompt_embeds, b.pooled_prompt_embeds_count, s.pooled_prompt_embeds_count, can.embeddings,
        "pooled_prompt_embeds", "floats");
  if (given == 0) invalid("buffers has no output buffer set");
}

void copy_floats(const at::Tensor& tensor, float* target) {
  if (target == nullptr || !tensor.defined()) return;
  const at::Tensor host = host_float(tensor);
  std::memcpy(target, host.data_ptr<float>(), static_cast<size_t>(host.numel()) * sizeof(float));
}

void copy_images(const std::vector<Image>& images, uint8_t* target) {
  if (target == nullptr) return;
  for (const Image& image : images) {
    std::memcpy(target, image.pixels.data(), image.pixels.size());
    target += image.pixels.size();
  }
}

diffuse_result* new_result(const GenerateOutput& out) {
  auto result = std::make_unique<diffuse_result>();
  result->latents = host_float(out.latents);
  if (out.image_tensor.defined()) result->image_tensor = host_float(out.image_tensor);
  result->images = out.images;
  result->interrupted = out.interrupted;
  result->times = {out.times.encode_seconds, out.times.denoise_seconds, out.times.decode_seconds, out.times.total_seconds};
  return result.release();
}

// The decoder's [B, 3, H, W] in [0, 1], with its RGB8 images.
GenerateOutput decoded(diffuse_pipeline& p, const DecodePlan& plan) {
  GenerateOutput out;
  const auto start = std::chrono::steady_clock::now();
  out.image_tensor = host_float(decode_latents(*p.pipe, plan.latents, plan.sizes.height, plan.sizes.width));
  out.images = images_from_tensor(out.image_tensor);
  out.times.decode_seconds = out.times.total_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace
}  // namespace diffuse::c_api

using namespace diffuse::c_api;

extern "C" {

void diffuse_encode_request_init_sized(diffuse_encode_request* request, size_t struct_size) {
  init_versioned(request, struct_size, default_encode_request());
}
void diffuse_generate_request_init_sized(diffuse_generate_request* request, size_t struct_size) {
  init_versioned(request, struct_size, default_generate_request());
}
void diffuse_sizes_init_sized(diffuse_sizes* sizes, size_t struct_size) {
  init_versioned(sizes, struct_size, zeroed<diffuse_sizes>());
}
void diffuse_buffers_init_sized(diffuse_buffers* buffers, size_t struct_size) {
  init_versioned(buffers, struct_size, zeroed<diffuse_buffers>());
}

// ---- encode -------------------------------------------------------------------------------------------

diffuse_status diffuse_encode_sizes(diffuse_pipeline* pipeline, const diffuse_encode_request* request,
                                    diffuse_sizes* sizes) {
  return guarded("diffuse_encode_sizes", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    const auto r = read_versioned(request, default_encode_request(), kEncodeRequestV1, "request");
    require(sizes, "sizes");
    PipelineCall call(p);
    write_versioned(sizes, flux_encode_sizes(p, plan_encode(p, r), "diffuse_encode_sizes"), kSizesV1, "sizes");
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_encode(diffuse_pipeline* pipeline, const diffuse_encode_request* request, diffuse_result** out) {
  if (out != nullptr) *out = nullptr;
  return guarded("diffuse_encode", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    const auto r = read_versioned(request, default_encode_request(), kEncodeRequestV1, "request");
    require(out, "out");
    PipelineCall call(p);
    const EncodePlan plan = plan_encode(p, r);
    const auto start = std::chrono::steady_clock::now();
    diffuse::PromptEmbeddings embeddings = encode_prompt(*p.pipe, plan.request);
    auto result = std::make_unique<diffuse_result>();
    result->prompt_embeds = host_float(embeddings.prompt_embeds);
    if (embeddings.pooled_prompt_embeds.defined())
      result->pooled_prompt_embeds = host_float(embeddings.pooled_prompt_embeds);
    if (embeddings.negative_prompt_embeds.defined())
      result->negative_prompt_embeds = host_float(embeddings.negative_prompt_embeds);
    result->prompt_embeds_mask = float_mask(embeddings.prompt_embeds_mask);
    result->negative_prompt_embeds_mask = float_mask(embeddings.negative_prompt_embeds_mask);
    result->times.encode_seconds = result->times.total_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    *out = result.release();
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_encode_into(diffuse_pipeline* pipeline, const diffuse_encode_request* request,
                                   const diffuse_buffers* buffers) {
  return guarded("diffuse_encode_into", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    const auto r = read_versioned(request, default_encode_request(), kEncodeRequestV1, "request");
    const auto b = read_versioned(buffers, zeroed<diffuse_buffers>(), kBuffersV1, "buffers");
    PipelineCall call(p);
    const EncodePlan plan = plan_encode(p, r);
    check_buffers(b, flux_encode_sizes(p, plan, "diffuse_encode_into"),
                  {.embeddings = true, .why_not = " (encode writes prompt_embeds and pooled_prompt_embeds)"});
    diffuse::PromptEmbeddings embeddings = encode_prompt(*p.pipe, plan.request);
    copy_floats(embeddings.prompt_embeds, b.prompt_embeds);
    copy_floats(embeddings.pooled_prompt_embeds, b.pooled_prompt_embeds);
    return DIFFUSE_OK;
  });
}

// ---- generate -----------------------------------------------------------------------------------------

diffuse_status diffuse_generate_sizes(diffuse_pipeline* pipeline, const diffuse_generate_request* request,
                                      diffuse_sizes* sizes) {
  return guarded("diffuse_generate_sizes", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    const auto r = read_versioned(request, default_generate_request(), kGenerateRequestV1, "request");
    require(sizes, "sizes");
    PipelineCall call(p);
    write_versioned(sizes, plan_generate(p, r).sizes, kSizesV1, "sizes");
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_generate(diffuse_pipeline* pipeline, const diffuse_generate_request* request,
                                diffuse_result** out) {
  if (out != nullptr) *out = nullptr;
  return guarded("diffuse_generate", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    const auto r = read_versioned(request, default_generate_request(), kGenerateRequestV1, "request");
    require(out, "out");
    PipelineCall call(p);
    const GeneratePlan plan = plan_generate(p, r);
    *out = new_result(run_generate(p, r, plan));
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_generate_into(diffuse_pipeline* pipeline, const diffuse_generate_request* request,
                                     const diffuse_buffers* buffers, int* interrupted) {
  if (interrupted != nullptr) *interrupted = 0;
  return guarded("diffuse_generate_into", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    const auto r = read_versioned(request, default_generate_request(), kGenerateRequestV1, "request");
    const auto b = read_versioned(buffers, zeroed<diffuse_buffers>(), kBuffersV1, "buffers");
    PipelineCall call(p);
    const GeneratePlan plan = plan_generate(p, r);
    const char* why_not = r.output_type == DIFFUSE_OUTPUT_LATENT  ? " (the output type is latent)"
                          : r.output_type == DIFFUSE_OUTPUT_TENSOR ? " (the output type is tensor)"
                                                                   : " (generate writes latents and images)";
    check_buffers(b, plan.sizes, {.latents = true, .images = true, .image_tensor = true, .why_not = why_not});
    const diffuse::GenerateOutput output = run_generate(p, r, plan);
    copy_floats(output.latents, b.latents);
    copy_images(output.images, b.images);
    copy_floats(output.image_tensor, b.image_tensor);
    if (interrupted != nullptr) *interrupted = output.interrupted ? 1 : 0;
    return DIFFUSE_OK;
  });
}

// ---- decode ---------------------------------------------------------------------------------------------

diffuse_status diffuse_decode_sizes(diffuse_pipeline* pipeline, int64_t batch, int64_t height, int64_t width,
                                    diffuse_sizes* sizes) {
  return guarded("diffuse_decode_sizes", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    require(sizes, "sizes");
    PipelineCall call(p);
    write_versioned(sizes, plan_decode(p, nullptr, 0, batch, height, width, false).sizes, kSizesV1, "sizes");
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_decode(diffuse_pipeline* pipeline, const float* latents, size_t latents_count, int64_t batch,
                              int64_t height, int64_t width, diffuse_result** out) {
  if (out != nullptr) *out = nullptr;
  return guarded("diffuse_decode", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    require(out, "out");
    PipelineCall call(p);
    const DecodePlan plan = plan_decode(p, latents, latents_count, batch, height, width, true);
    const diffuse::GenerateOutput output = decoded(p, plan);
    auto result = std::make_unique<diffuse_result>();
    result->image_tensor = output.image_tensor;
    result->images = output.images;
    result->times.decode_seconds = result->times.total_seconds = output.times.decode_seconds;
    *out = result.release();
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_decode_into(diffuse_pipeline* pipeline, const float* latents, size_t latents_count, int64_t batch,
                                   int64_t height, int64_t width, const diffuse_buffers* buffers) {
  return guarded("diffuse_decode_into", [&] {
    diffuse_pipeline& p = require(pipeline, "pipeline");
    const auto b = read_versioned(buffers, zeroed<diffuse_buffers>(), kBuffersV1, "buffers");
    PipelineCall call(p);
    const DecodePlan plan = plan_decode(p, latents, latents_count, batch, height, width, true);
    check_buffers(b, plan.sizes, {.images = true, .image_tensor = true, .why_not = " (decode writes images)"});
    const diffuse::GenerateOutput output = decoded(p, plan);
    copy_images(output.images, b.images);
    copy_floats(output.image_tensor, b.image_tensor);
    return DIFFUSE_OK;
  });
}

}  // extern "C"
