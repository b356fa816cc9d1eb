#pragma once
// One generate call run in stages, each with only its own components loaded, as diffusers'
// model-sharding guide does, for every family (examples/model_sharding.cpp, examples/device_map.cpp):
//
//   const StageComponents parts = stage_components(folder);             // from model_index.json
//   PromptEmbeddings e;
//   { auto enc = load_pipeline(folder, {.skip = parts.all_except(parts.text)});
//     e = enc->encode_prompt(staged_encode_request(request, enc->info())); }
//   GenerateOutput den;
//   { auto pipe = load_pipeline(folder, {.skip = parts.all_except({parts.denoiser})});
//     den = pipe->generate(with_embeddings(request, e, OutputType::Latent)); }
//   auto dec = load_pipeline(folder, {.skip = parts.all_except({parts.vae})});
//   at::Tensor image = dec->decode_latents(den.latents, den.height, den.width);
//
// The stages give the numbers of the one call (generate(request)): stage 1 encodes the negative
// prompts exactly when generate would (PipelineInfo's negative-prompt fields say when), and stage 2
// repeats the embeddings for num_images_per_prompt as generate does.

#include <filesystem>
#include <string>
#include <vector>

#include "diffuse/pipelines/generate_request.hpp"

namespace diffuse {

// A pipeline folder's components by stage, from the names model_index.json gives them (diffusers'
// names, the same in every family).
struct StageComponents {
  std::vector<std::string> text;  // every tokenizer* and text_encoder*: stage 1
  std::string denoiser;           // "transformer" (FLUX.1, Qwen-Image) or "unet" (SD): stage 2
  std::string vae = "vae";        // stage 3

  // The components of the three stages but `kept`: what one stage's load skips.
  std::vector<std::string> all_except(const std::vector<std::string>& kept) const;
};

// Reads `folder`/model_index.json. Throws diffuse::Error for a folder that is not a pipeline, or whose
// index names no text encoder, no denoiser ("transformer" or "unet") or no "vae".
StageComponents stage_components(const std::filesystem::path& folder);

// Whether generate(request) guides with negative embeddings on `info`'s family: SD when guidance_scale
// is above 1 (with "" as the negative prompt when none is given), Qwen-Image when true_cfg_scale is
// above 1 and a negative prompt (or negative embeddings) is given, FLUX.1 never.
bool uses_negative_embeddings(const PipelineInfo& info, const GenerateRequest& request);

// The encode_prompt request that generate(request) makes: its prompts and negative prompts, with
// do_classifier_free_guidance as uses_negative_embeddings says, for one image per prompt (stage 2
// repeats the rows). Throws diffuse::Error for a negative prompt or true_cfg_scale the family does not
// take (before stage 1 runs, where stage 2 would refuse them).
EncodeRequest staged_encode_request(const GenerateRequest& request, const PipelineInfo& info);

// `request` for stage 2: its prompts replaced by `embeddings` (prompt, pooled and negative embeddings
// and their masks, those that are defined), with `output_type`.
GenerateRequest with_embeddings(GenerateRequest request, const PromptEmbeddings& embeddings,
                                OutputType output_type = OutputType::Latent);

}  // namespace diffuse
