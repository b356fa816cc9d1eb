#include "server/responses.hpp"

#include "server/base64.hpp"

namespace diffuse::server {

using nlohmann::json;

nlohmann::json job_json(const JobSnapshot& job, bool with_images) {
  json out = {{"id", job.id},
              {"state", to_string(job.state)},
              {"queue_position", job.queue_position},
              {"step", job.step},
              {"total_steps", job.total_steps},
              {"created", job.created_unix},
              {"parameters", job.params.to_json()}};
  if (!job.error.empty()) out["error"] = job.error;
  if (job.state == JobState::Succeeded) {
    out["width"] = job.width;
    out["height"] = job.height;
    if (with_images) {
      json images = json::array();
      for (const std::string& png : job.pngs) images.push_back(base64_encode(png));
      out["images"] = std::move(images);
    }
  }
  return out;
}

nlohmann::json openai_response(const JobSnapshot& job, const std::vector<std::string>& ignored) {
  json data = json::array();
  for (const std::string& png : job.pngs)
    data.push_back({{"b64_json", base64_encode(png)}, {"revised_prompt", job.params.prompt}});
  json out = {{"created", job.created_unix}, {"data", std::move(data)}, {"parameters", job.params.to_json()}};
  if (!ignored.empty()) out["ignored_fields"] = ignored;
  return out;
}

nlohmann::json txt2img_response(const JobSnapshot& job, const std::vector<std::string>& ignored) {
  json images = json::array();
  for (const std::string& png : job.pngs) images.push_back(base64_encode(png));
  const GenerationParams& p = job.params;
  const json parameters = {{"prompt", p.prompt},       {"negative_prompt", p.negative_prompt},
                           {"steps", p.steps},
                           {"cfg_scale", (p.true_cfg_scale ? p.true_cfg_scale : p.guidance_scale).value_or(0)},
                           {"width", p.width},
                           {"height", p.height},       {"seed", p.seed},
                           {"batch_size", p.num_images}, {"scheduler", p.scheduler}};
  json info = parameters;
  info["all_seeds"] = json::array({p.seed});
  json out = {{"images", std::move(images)}, {"parameters", parameters}, {"info", info.dump()}};
  if (!ignored.empty()) out["ignored_fields"] = ignored;
  return out;
}

}  // namespace diffuse::server
