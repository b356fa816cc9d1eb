// Library-owned results and their accessors, tensors across the boundary, and PNG writing.

#include <ATen/ATen.h>

#include "c_api/c_api_internal.hpp"

namespace diffuse::c_api {

at::Tensor tensor_from(const float* data, at::IntArrayRef shape) {
  return at::from_blob(const_cast<float*>(data), shape, at::kFloat).clone();
}

at::Tensor host_float(const at::Tensor& tensor) { return tensor.detach().to(at::kCPU, at::kFloat).contiguous(); }

}  // namespace diffuse::c_api

using namespace diffuse::c_api;

extern "C" {

diffuse_status diffuse_result_tensor(const diffuse_result* result, diffuse_tensor_name name, diffuse_tensor_view* view) {
  return guarded("diffuse_result_tensor", [&] {
    const diffuse_result& r = require(result, "result");
    diffuse_tensor_view& v = require(view, "view");
    const at::Tensor* tensor = nullptr;
    const char* what = nullptr;
    switch (name) {
      case DIFFUSE_TENSOR_LATENTS: tensor = &r.latents; what = "latents"; break;
      case DIFFUSE_TENSOR_IMAGE: tensor = &r.image_tensor; what = "an image tensor"; break;
      case DIFFUSE_TENSOR_PROMPT_EMBEDS: tensor = &r.prompt_embeds; what = "prompt_embeds"; break;
      case DIFFUSE_TENSOR_POOLED_PROMPT_EMBEDS: tensor = &r.pooled_prompt_embeds; what = "pooled_prompt_embeds"; break;
      case DIFFUSE_TENSOR_NEGATIVE_PROMPT_EMBEDS:
        tensor = &r.negative_prompt_embeds;
        what = "negative_prompt_embeds";
        break;
      case DIFFUSE_TENSOR_PROMPT_EMBEDS_MASK: tensor = &r.prompt_embeds_mask; what = "prompt_embeds_mask"; break;
      case DIFFUSE_TENSOR_NEGATIVE_PROMPT_EMBEDS_MASK:
        tensor = &r.negative_prompt_embeds_mask;
        what = "negative_prompt_embeds_mask";
        break;
      default: invalid("unknown tensor name " + std::to_string(static_cast<int>(name)));
    }
    if (!tensor->defined()) fail(DIFFUSE_ERROR_NOT_FOUND, std::string("this result has no ") + what);
    std::memset(&v, 0, sizeof v);
    v.data = tensor->data_ptr<float>();
    v.ndim = static_cast<int32_t>(tensor->dim());
    for (int64_t d = 0; d < tensor->dim(); ++d) v.shape[d] = tensor->size(d);
    v.count = static_cast<size_t>(tensor->numel());
    return DIFFUSE_OK;
  });
}

size_t diffuse_result_image_count(const diffuse_result* result) {
  return result == nullptr ? 0 : result->images.size();
}

diffuse_status diffuse_result_image(const diffuse_result* result, size_t index, diffuse_image_view* view) {
  return guarded("diffuse_result_image", [&] {
    const diffuse_result& r = require(result, "result");
    diffuse_image_view& v = require(view, "view");
    if (index >= r.images.size())
      fail(DIFFUSE_ERROR_NOT_FOUND, "image " + std::to_string(index) + " is out of range: the result has " +
                                        std::to_string(r.images.size()) + " images");
    const diffuse::Image& image = r.images[index];
    v.pixels = image.pixels.data();
    v.width = image.width;
    v.height = image.height;
    v.size = image.pixels.size();
    return DIFFUSE_OK;
  });
}

int diffuse_result_interrupted(const diffuse_result* result) { return result != nullptr && result->interrupted ? 1 : 0; }

diffuse_status diffuse_result_times(const diffuse_result* result, diffuse_times* times) {
  return guarded("diffuse_result_times", [&] {
    require(times, "times") = require(result, "result").times;
    return DIFFUSE_OK;
  });
}

void diffuse_result_free(diffuse_result* result) { delete result; }

diffuse_status diffuse_save_png(const char* path, const uint8_t* pixels, int64_t width, int64_t height) {
  return guarded("diffuse_save_png", [&] {
    require(path, "path");
    require(pixels, "pixels");
    if (width <= 0 || height <= 0 || width > 65535 || height > 65535)
      invalid("image size " + std::to_string(width) + "x" + std::to_string(height) + " is not in [1, 65535]");
    diffuse::Image image;
    image.width = width;
    image.height = height;
    image.pixels.assign(pixels, pixels + static_cast<size_t>(width * height * 3));
    image.save_png(path);
    return DIFFUSE_OK;
  });
}

}  // extern "C"
