#include "server/generation_params.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include "diffuse/error.hpp"
#include "server/api_error.hpp"

namespace diffuse::server {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& field, const std::string& message) { throw ApiError(400, field, message); }

const json* find(const json& body, const char* field) {
  const auto it = body.find(field);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<std::string> get_string(const json& body, const char* field) {
  const json* value = find(body, field);
  if (value == nullptr) return std::nullopt;
  if (!value->is_string()) bad(field, std::string("'") + field + "' must be a string, got " + value->dump());
  return value->get<std::string>();
}

std::optional<int64_t> get_int(const json& body, const char* field, int64_t min, int64_t max) {
  const json* value = find(body, field);
  if (value == nullptr) return std::nullopt;
  const std::string range = "from " + std::to_string(min) + " to " + std::to_string(max);
  if (!value->is_number_integer())
    bad(field, std::string("'") + field + "' must be an integer " + range + ", got " + value->dump());
  // Unsigned values above int64's range read as negative through get<int64_t>; compare them unsigned.
  if (value->is_number_unsigned() && value->get<uint64_t>() > static_cast<uint64_t>(max))
    bad(field, std::string("'") + field + "' must be an integer " + range + ", got " + value->dump());
  const int64_t n = value->get<int64_t>();
  if (n < min || n > max) bad(field, std::string("'") + field + "' must be an integer " + range + ", got " + value->dump());
  return n;
}

std::optional<double> get_number(const json& body, const char* field, double min, double max) {
  const json* value = find(body, field);
  if (value == nullptr) return std::nullopt;
  if (!value->is_number()) bad(field, std::string("'") + field + "' must be a number, got " + value->dump());
  const double x = value->get<double>();
  if (!std::isfinite(x) || x < min || x > max)
    bad(field, std::string("'") + field + "' must be a number from " + std::to_string(min) + " to " +
                   std::to_string(max) + ", got " + value->dump());
  return x;
}

// Seeds: a non-negative integer below 2^63, or (AUTOMATIC1111) -1 for a random one.
std::optional<uint64_t> get_seed(const json& body, const char* field, bool minus_one_is_random) {
  const json* value = find(body, field);
  if (value == nullptr) return std::nullopt;
  if (minus_one_is_random && value->is_number_integer() && value->get<int64_t>() == -1) return std::nullopt;
  if (!value->is_number_integer() || (value->is_number_integer() && !value->is_number_unsigned() && value->get<int64_t>() < 0))
    bad(field, std::string("'") + field + "' must be a non-negative integer" +
                   (minus_one_is_random ? " or -1 (random)" : "") + ", got " + value->dump());
  return value->get<uint64_t>();
}

void check_prompt(const std::string& field, const std::string& text, const RequestLimits& limits) {
  if (text.size() > limits.max_prompt_bytes)
    bad(field, "'" + field + "' is " + std::to_string(text.size()) + " bytes; at most " +
                   std::to_string(limits.max_prompt_bytes) + " are accepted");
}

void check_size(const std::string& field, const std::string& name, int64_t value, const RequestLimits& limits) {
  const int64_t multiple = limits.info.size_multiple;
  if (value < multiple || value > limits.max_size || value % multiple != 0)
    bad(field, "the " + name + " must be a multiple of " + std::to_string(multiple) + " (" + limits.info.class_name +
                   ") from " + std::to_string(multiple) + " to " + std::to_string(limits.max_size) + ", got " +
                   std::to_string(value));
}

void check_scheduler(const std::string& field, const std::string& name, const RequestLimits& limits) {
  if (name.empty() || limits.scheduler == nullptr) return;
  try {
    make_scheduler(name, limits.scheduler->config());
  } catch (const diffuse::Error& e) {
    bad(field, "'" + field + "': " + e.what());
  }
}

// What every shape shares once its fields are read: the family's defaults and rules.
void finish(GenerationParams& p, const RequestLimits& limits, const char* negative_field) {
  if (!p.negative_prompt.empty() && !limits.info.uses_negative_prompt)
    bad(negative_field, std::string("'") + negative_field + "': " + limits.info.class_name +
                            " takes no negative prompt");
}

void list_ignored(const json& body, const std::set<std::string>& known, std::vector<std::string>* ignored) {
  if (ignored == nullptr) return;
  for (const auto& [key, value] : body.items())
    if (!known.count(key)) ignored->push_back(key);
}

}  // namespace

GenerateRequest GenerationParams::request() const {
  GenerateRequest r;
  r.prompt = prompt;
  if (!negative_prompt.empty()) r.negative_prompt = negative_prompt;
  r.height = height;
  r.width = width;
  r.num_inference_steps = steps;
  r.guidance_scale = guidance_scale;
  r.true_cfg_scale = true_cfg_scale;
  r.seed = seed;
  r.num_images_per_prompt = num_images;
  r.progress = false;
  return r;
}

nlohmann::json GenerationParams::to_json() const {
  const auto optional = [](const std::optional<double>& x) { return x ? nlohmann::json(*x) : nlohmann::json(nullptr); };
  return {{"prompt", prompt},   {"negative_prompt", negative_prompt}, {"width", width},
          {"height", height},   {"steps", steps},                     {"guidance", optional(guidance_scale)},
          {"true_cfg_scale", optional(true_cfg_scale)}, {"seed", seed}, {"n", num_images},
          {"scheduler", scheduler}};
}

GenerationParams GenerationParams::from_json(const nlohmann::json& j) {
  GenerationParams p;
  p.prompt = j.at("prompt").get<std::string>();
  p.negative_prompt = j.at("negative_prompt").get<std::string>();
  p.width = j.at("width").get<int64_t>();
  p.height = j.at("height").get<int64_t>();
  p.steps = j.at("steps").get<int64_t>();
  if (!j.at("guidance").is_null()) p.guidance_scale = j.at("guidance").get<double>();
  if (!j.at("true_cfg_scale").is_null()) p.true_cfg_scale = j.at("true_cfg_scale").get<double>();
  p.seed = j.at("seed").get<uint64_t>();
  p.num_images = j.at("n").get<int64_t>();
  p.scheduler = j.at("scheduler").get<std::string>();
  return p;
}

nlohmann::json parse_body(const std::string& body) {
  json parsed;
  try {
    parsed = json::parse(body);
  } catch (const json::parse_error& e) {
    bad("body", std::string("the body is not valid JSON: ") + e.what());
  }
  if (!parsed.is_object()) bad("body", "the body must be a JSON object, got " + std::string(parsed.type_name()));
  return parsed;
}

GenerationParams parse_openai_request(const nlohmann::json& body, const RequestLimits& limits,
                                      std::vector<std::string>* ignored) {
  GenerationParams p;
  const auto prompt = get_string(body, "prompt");
  if (!prompt) bad("prompt", "'prompt' is required");
  p.prompt = *prompt;
  check_prompt("prompt", p.prompt, limits);
  p.negative_prompt = get_string(body, "negative_prompt").value_or("");
  check_prompt("negative_prompt", p.negative_prompt, limits);
  p.num_images = get_int(body, "n", 1, limits.max_images).value_or(1);
  p.width = limits.info.default_width;
  p.height = limits.info.default_height;
  if (const auto size = get_string(body, "size")) {
    // "WxH", both strict decimal numbers.
    const auto x = size->find('x');
    const auto digits = [](const std::string& s) {
      return !s.empty() && s.size() <= 6 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    const std::string w = x == std::string::npos ? "" : size->substr(0, x);
    const std::string h = x == std::string::npos ? "" : size->substr(x + 1);
    if (!digits(w) || !digits(h)) bad("size", "'size' must be \"WIDTHxHEIGHT\" (e.g. \"1024x1024\"), got \"" + *size + "\"");
    p.width = std::stoll(w);
    p.height = std::stoll(h);
  }
  check_size("size", "width", p.width, limits);
  check_size("size", "height", p.height, limits);
  if (const auto format = get_string(body, "response_format"); format && *format != "b64_json")
    bad("response_format", "'response_format' must be \"b64_json\" (images come in the answer), got \"" + *format + "\"");
  get_string(body, "model");  // any name: the server has one pipeline
  p.steps = get_int(body, "steps", 1, limits.max_steps).value_or(limits.info.default_steps);
  p.guidance_scale = get_number(body, "guidance", 0, 100);
  if (!p.guidance_scale && !limits.info.true_cfg) p.guidance_scale = limits.info.default_guidance_scale;
  p.true_cfg_scale = get_number(body, "true_cfg_scale", 0, 100);
  if (p.true_cfg_scale && !limits.info.true_cfg)
    bad("true_cfg_scale", "'true_cfg_scale': " + limits.info.class_name + " has no true CFG (use 'guidance')");
  if (!p.true_cfg_scale && limits.info.true_cfg) p.true_cfg_scale = limits.info.default_true_cfg_scale;
  if (const auto seed = get_seed(body, "seed", false)) p.seed = *seed;
  else p.seed = random_seed();
  p.scheduler = get_string(body, "scheduler").value_or("");
  check_scheduler("scheduler", p.scheduler, limits);
  finish(p, limits, "negative_prompt");
  list_ignored(body,
               {"prompt", "negative_prompt", "n", "size", "response_format", "model", "steps", "guidance",
                "true_cfg_scale", "seed", "scheduler"},
               ignored);
  return p;
}

std::optional<std::string> scheduler_for_sampler(const std::string& sampler_name) {
  static const std::map<std::string, std::string> samplers = {
      {"Euler", "EulerDiscreteScheduler"},
      {"Euler a", "EulerAncestralDiscreteScheduler"},
      {"DDIM", "DDIMScheduler"},
      {"PLMS", "PNDMScheduler"},
      {"PNDM", "PNDMScheduler"},
      {"DPM++ 2M", "DPMSolverMultistepScheduler"},
      {"DPM++ 2M Karras", "DPMSolverMultistepScheduler"},
      {"Flow Match Euler", "FlowMatchEulerDiscreteScheduler"},
  };
  const auto it = samplers.find(sampler_name);
  if (it == samplers.end()) return std::nullopt;
  return it->second;
}

GenerationParams parse_txt2img_request(const nlohmann::json& body, const RequestLimits& limits,
                                       std::vector<std::string>* ignored) {
  GenerationParams p;
  p.prompt = get_string(body, "prompt").value_or("");
  check_prompt("prompt", p.prompt, limits);
  p.negative_prompt = get_string(body, "negative_prompt").value_or("");
  check_prompt("negative_prompt", p.negative_prompt, limits);
  p.width = get_int(body, "width", 1, 1 << 20).value_or(limits.info.default_width);
  p.height = get_int(body, "height", 1, 1 << 20).value_or(limits.info.default_height);
  check_size("width", "width", p.width, limits);
  check_size("height", "height", p.height, limits);
  p.steps = get_int(body, "steps", 1, limits.max_steps).value_or(limits.info.default_steps);
  p.num_images = get_int(body, "batch_size", 1, limits.max_images).value_or(1);
  get_int(body, "n_iter", 1, 1);
  // cfg_scale is the scale of the guidance the family has: Qwen-Image's true CFG, else guidance_scale.
  const auto cfg = get_number(body, "cfg_scale", 0, 100);
  if (limits.info.true_cfg) p.true_cfg_scale = cfg.value_or(limits.info.default_true_cfg_scale);
  else p.guidance_scale = cfg.value_or(limits.info.default_guidance_scale);
  if (const auto seed = get_seed(body, "seed", true)) p.seed = *seed;
  else p.seed = random_seed();
  // sampler_name: AUTOMATIC1111's names (or a diffuse scheduler name); "scheduler" is A1111's schedule
  // type ("Automatic", "Karras"), which the sampler's class decides here.
  if (const auto sampler = get_string(body, "sampler_name"); sampler && !sampler->empty()) {
    p.scheduler = scheduler_for_sampler(*sampler).value_or(*sampler);
    check_scheduler("sampler_name", p.scheduler, limits);
  }
  get_string(body, "scheduler");
  finish(p, limits, "negative_prompt");
  list_ignored(body,
               {"prompt", "negative_prompt", "width", "height", "steps", "batch_size", "n_iter", "cfg_scale", "seed",
                "sampler_name", "scheduler"},
               ignored);
  return p;
}

uint64_t random_seed() {
  static std::mutex mutex;
  static std::mt19937_64 generator{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mutex);
  return generator() & 0xffffffffULL;
}

}  // namespace diffuse::server
