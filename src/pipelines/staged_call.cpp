#include "diffuse/pipelines/staged_call.hpp"

#include <algorithm>

#include "diffuse/error.hpp"
#include "diffuse/io/configs.hpp"

namespace diffuse {
namespace {

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

}  // namespace

std::vector<std::string> StageComponents::all_except(const std::vector<std::string>& kept) const {
  std::vector<std::string> all = text;
  all.push_back(denoiser);
  all.push_back(vae);
  std::vector<std::string> out;
  for (const std::string& name : all)
    if (std::find(kept.begin(), kept.end(), name) == kept.end()) out.push_back(name);
  return out;
}

StageComponents stage_components(const std::filesystem::path& folder) {
  const auto index_path = folder / "model_index.json";
  if (!std::filesystem::exists(index_path))
    throw Error(folder.string() + ": no model_index.json (not a diffusers pipeline folder)");
  const ModelIndex index = ModelIndex::from_file(index_path);
  StageComponents parts;
  for (const auto& [name, component] : index.components)
    if (starts_with(name, "tokenizer") || starts_with(name, "text_encoder")) parts.text.push_back(name);
  for (const char* name : {"transformer", "unet"})
    if (index.components.count(name) != 0) parts.denoiser = name;
  if (parts.text.empty())
    throw Error(index_path.string() + ": no tokenizer or text_encoder component; the staged flow starts from prompts");
  if (parts.denoiser.empty())
    throw Error(index_path.string() + ": neither a 'transformer' nor a 'unet' component (the denoiser)");
  if (index.components.count(parts.vae) == 0) throw Error(index_path.string() + ": no 'vae' component");
  return parts;
}

bool uses_negative_embeddings(const PipelineInfo& info, const GenerateRequest& request) {
  if (!info.uses_negative_prompt) return false;
  const bool given = !request.negative_prompt.empty() || request.negative_prompt_embeds.defined();
  if (!given && !info.empty_negative_prompt) return false;
  const double scale = info.true_cfg ? request.true_cfg_scale.value_or(info.default_true_cfg_scale)
                                     : request.guidance_scale.value_or(info.default_guidance_scale);
  return scale > 1;
}

EncodeRequest staged_encode_request(const GenerateRequest& request, const PipelineInfo& info) {
  // Refused here, before stage 1's work, as stage 2's generate would refuse them.
  if (!info.uses_negative_prompt && !request.negative_prompt.empty())
    throw Error(info.class_name + " takes no negative prompt");
  if (!info.true_cfg && request.true_cfg_scale)
    throw Error(info.class_name + " takes no true_cfg_scale (Qwen-Image's true CFG)");
  return {.prompt = request.prompt,
          .prompt_2 = request.prompt_2,
          .negative_prompt = request.negative_prompt,
          .do_classifier_free_guidance = uses_negative_embeddings(info, request),
          .num_images_per_prompt = 1,
          .max_sequence_length = request.max_sequence_length};
}

GenerateRequest with_embeddings(GenerateRequest request, const PromptEmbeddings& embeddings, OutputType output_type) {
  request.prompt = {};
  request.prompt_2 = {};
  request.negative_prompt = {};
  request.prompt_embeds = embeddings.prompt_embeds;
  request.pooled_prompt_embeds = embeddings.pooled_prompt_embeds;
  request.negative_prompt_embeds = embeddings.negative_prompt_embeds;
  request.prompt_embeds_mask = embeddings.prompt_embeds_mask;
  request.negative_prompt_embeds_mask = embeddings.negative_prompt_embeds_mask;
  request.output_type = output_type;
  return request;
}

}  // namespace diffuse
