// The few calls the C API makes that are not on DiffusionPipeline: each family's encode_prompt and
// decode_latents have their own signatures, so they are reached through the family's class.

#include "c_api/c_api_internal.hpp"
#include "diffuse/pipelines/flux_pipeline.hpp"
#include "diffuse/pipelines/qwenimage_pipeline.hpp"
#include "diffuse/pipelines/stable_diffusion_pipeline.hpp"

namespace diffuse::c_api {

// Every family's encode_prompt is the base's virtual.
PromptEmbeddings encode_prompt(DiffusionPipeline& pipe, const EncodeRequest& request) {
  return pipe.encode_prompt(request);
}

at::Tensor decode_latents(DiffusionPipeline& pipe, const at::Tensor& latents, int64_t height, int64_t width) {
  if (auto* flux = dynamic_cast<FluxPipeline*>(&pipe)) return flux->decode_latents(latents, height, width);
  if (auto* sd = dynamic_cast<StableDiffusionPipeline*>(&pipe)) return sd->decode_latents(latents);
  if (auto* qwen = dynamic_cast<QwenImagePipeline*>(&pipe)) return qwen->decode_latents(latents, height, width);
  invalid(pipe.class_name() + " has no latent decoding in the C API");
}


bool is_flux(const DiffusionPipeline& pipe) { return dynamic_cast<const FluxPipeline*>(&pipe) != nullptr; }

}  // namespace diffuse::c_api
