#pragma once
// The JSON answers: a job's state, and the two synchronous APIs' shapes (OpenAI's images API and
// AUTOMATIC1111's txt2img), each with the parameters the images were made with (the seed included).

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "server/job_queue.hpp"

namespace diffuse::server {

// {"id", "state", "queue_position", "step", "total_steps", "created", "parameters", "error"?,
//  "width"/"height"/"images" (base64 PNGs) once succeeded and when `with_images`}.
nlohmann::json job_json(const JobSnapshot& job, bool with_images);

// {"created", "data": [{"b64_json", "revised_prompt"}], "parameters", "ignored_fields"?}
nlohmann::json openai_response(const JobSnapshot& job, const std::vector<std::string>& ignored);

// {"images": [base64 PNG...], "parameters": {A1111's names}, "info": "<JSON text with the seed>"}
nlohmann::json txt2img_response(const JobSnapshot& job, const std::vector<std::string>& ignored);

}  // namespace diffuse::server
