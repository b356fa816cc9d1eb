#pragma once
// What one generation job makes, read from a request body and checked before any work: the shapes
// of OpenAI's images API (POST /v1/images/generations, POST /v1/jobs) and of AUTOMATIC1111's
// txt2img (POST /sdapi/v1/txt2img). Every default is filled in (the seed drawn), so the parameters
// a job reports are the ones it ran with, and a rank that receives them runs the same call.
//
//   const GenerationParams params = parse_openai_request(body, limits);   // throws ApiError(400, field, ...)
//   diffuse::GenerateRequest request = params.request();

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/pipelines/generate_request.hpp"
#include "diffuse/schedulers/scheduler.hpp"

namespace diffuse::server {

// What a request may ask for, and the family's rules (from the loaded pipeline's PipelineInfo).
struct RequestLimits {
  PipelineInfo info;
  const Scheduler* scheduler = nullptr;  // the folder's, to check scheduler names against its config
  int64_t max_size = 2048;               // width and height at most
  int64_t max_steps = 150;
  int64_t max_images = 4;                // images per request (n, batch_size)
  size_t max_prompt_bytes = 16384;
};

struct GenerationParams {
  std::string prompt;
  std::string negative_prompt;  // "" = none
  int64_t width = 0;
  int64_t height = 0;
  int64_t steps = 0;
  // The family's guidance (FLUX.1's distilled, SD's classifier-free); unset for Qwen-Image unless given
  // (its transformer takes one only when guidance-distilled).
  std::optional<double> guidance_scale;
  std::optional<double> true_cfg_scale;  // Qwen-Image's true CFG (with a negative prompt); unset elsewhere
  uint64_t seed = 0;
  int64_t num_images = 1;
  std::string scheduler;  // a class name or alias; "" = the folder's

  // The pipeline call these parameters describe (no progress bar; the caller adds the callback).
  GenerateRequest request() const;
  nlohmann::json to_json() const;
  // The inverse of to_json, for ranks that receive a job (trusted input: rank 0 wrote it).
  static GenerationParams from_json(const nlohmann::json& json);
};

// A request body as JSON; malformed JSON or a body that is not an object is ApiError(400, "body", ...).
nlohmann::json parse_body(const std::string& body);

// OpenAI's shape: prompt (required), n, size "WxH", response_format ("b64_json"), model, plus diffuse's
// negative_prompt, steps, guidance, true_cfg_scale, seed, scheduler. Fields of other names are
// ignored (clients send their own, e.g. "user"), and listed in `ignored` when given.
GenerationParams parse_openai_request(const nlohmann::json& body, const RequestLimits& limits,
                                      std::vector<std::string>* ignored = nullptr);

// AUTOMATIC1111's txt2img: prompt, negative_prompt, steps, cfg_scale, width, height, seed (-1: random),
// batch_size, n_iter (1), sampler_name / scheduler (mapped to a scheduler class).
GenerationParams parse_txt2img_request(const nlohmann::json& body, const RequestLimits& limits,
                                       std::vector<std::string>* ignored = nullptr);

// AUTOMATIC1111's sampler names that map to a diffuse scheduler ("Euler a" -> EulerAncestralDiscreteScheduler);
// nullopt for others.
std::optional<std::string> scheduler_for_sampler(const std::string& sampler_name);

// A random seed, as a request without one gets (below 2^32, as AUTOMATIC1111's, so JSON clients keep it exact).
uint64_t random_seed();

}  // namespace diffuse::server
