#include "diffuse/schedulers/ddim.hpp"

#include <cmath>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/pipelines/flux_latents.hpp"  // randn_tensor
#include "diffuse/schedulers/numpy_ops.hpp"

namespace diffuse {

namespace {
const char* const kWho = "DDIMScheduler";
}  // namespace

DDIMSchedulerConfig DDIMSchedulerConfig::from_json(const JsonConfig& json) {
  DDIMSchedulerConfig c;
  c.read(json);
  c.clip_sample = json.get_bool("clip_sample", c.clip_sample);
  c.set_alpha_to_one = json.get_bool("set_alpha_to_one", c.set_alpha_to_one);
  c.steps_offset = json.get_int("steps_offset", c.steps_offset);
  c.prediction_type = json.get_string("prediction_type", c.prediction_type);
  c.thresholding = json.get_bool("thresholding", c.thresholding);
  c.dynamic_thresholding_ratio = json.get_double("dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
  c.clip_sample_range = json.get_double("clip_sample_range", c.clip_sample_range);
  c.sample_max_value = json.get_double("sample_max_value", c.sample_max_value);
  c.timestep_spacing = json.get_string("timestep_spacing", c.timestep_spacing);
  c.rescale_betas_zero_snr = json.get_bool("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  return c;
}

nlohmann::json DDIMSchedulerConfig::to_json() const {
  nlohmann::json json = nlohmann::json::object();
  write(json);
  json["clip_sample"] = clip_sample;
  json["set_alpha_to_one"] = set_alpha_to_one;
  json["steps_offset"] = steps_offset;
  json["prediction_type"] = prediction_type;
  json["thresholding"] = thresholding;
  json["dynamic_thresholding_ratio"] = dynamic_thresholding_ratio;
  json["clip_sample_range"] = clip_sample_range;
  json["sample_max_value"] = sample_max_value;
  json["timestep_spacing"] = timestep_spacing;
  json["rescale_betas_zero_snr"] = rescale_betas_zero_snr;
  return json;
}

DDIMScheduler::DDIMScheduler(DDIMSchedulerConfig config)
    : Scheduler(kWho, config.to_json(), DDIMSchedulerConfig{}.to_json()), config_(std::move(config)) {
  check_choice(kWho, "prediction_type", config_.prediction_type, {"epsilon", "sample", "v_prediction"});
  check_choice(kWho, "timestep_spacing", config_.timestep_spacing, {"linspace", "leading", "trailing"});
  at::Tensor betas = make_betas(config_, kWho);
  if (config_.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  alphas_cumprod_ = alphas_cumprod_of(betas);
  // The "previous" alpha product of the last step: 1, or that of the first training step.
  final_alpha_cumprod_ = config_.set_alpha_to_one ? at::scalar_tensor(1.0, at::kFloat) : alphas_cumprod_[0];
  timesteps_ = at::arange(config_.num_train_timesteps - 1, -1, -1, at::kLong);
}

DDIMScheduler DDIMScheduler::from_config(const nlohmann::json& config, const std::string& source) {
  return made_from<DDIMScheduler>(config, source);
}

DDIMScheduler DDIMScheduler::from_pretrained(const std::filesystem::path& folder) {
  const std::filesystem::path file = folder / "scheduler_config.json";
  return from_config(JsonConfig::load(file).json(), file.string());
}

void DDIMScheduler::set_eta(double eta) {
  if (!(eta >= 0) || !std::isfinite(eta))
    throw Error(std::string(kWho) + ": eta must be a finite number >= 0, got " + std::to_string(eta));
  eta_ = eta;
}

void DDIMScheduler::set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) {
  const std::string where = std::string(kWho) + "::set_timesteps";
  if (num_inference_steps < 1)
    throw Error(where + ": num_inference_steps must be positive, got " + std::to_string(num_inference_steps));
  if (num_inference_steps > config_.num_train_timesteps)
    throw Error(where + ": num_inference_steps " + std::to_string(num_inference_steps) +
                " is more than the model's " + std::to_string(config_.num_train_timesteps) + " training steps");
  if (options.sigmas) throw Error(where + ": this scheduler takes no sigmas (its noise levels are its betas')");
  if (options.mu) throw Error(where + ": this scheduler takes no mu (it has no dynamic shifting)");
  std::vector<int64_t> t;
  for (double v : spaced_timesteps(config_.timestep_spacing, config_.num_train_timesteps, num_inference_steps,
                                   config_.steps_offset, kWho))
    t.push_back(static_cast<int64_t>(numpy_round(v)));
  timesteps_ = at::tensor(t, at::kLong);
  num_inference_steps_ = num_inference_steps;
}

at::Tensor DDIMScheduler::step_impl(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                                    std::optional<at::Generator> generator) {
  const std::string where = std::string(kWho) + "::step";
  if (num_inference_steps_ == 0) throw Error(where + ": call set_timesteps before stepping");
  if (model_output.sizes() != sample.sizes())
    throw Error(where + ": model_output " + c10::str(model_output.sizes()) + " and sample " +
                c10::str(sample.sizes()) + " differ in shape");
  const int64_t count = alphas_cumprod_.size(0);
  const int64_t t = training_step(timestep, count, where);
  // 1. The previous step's timestep (t - 1 in the paper's notation).
  const int64_t prev_t = t - config_.num_train_timesteps / num_inference_steps_;
  if (prev_t >= count) throw Error(where + ": previous timestep " + std::to_string(prev_t) + " is out of range");

  // 2. Alphas and betas, as 0-dim float32 tensors (diffusers indexes its tensor), so they round as there.
  const at::Tensor alpha_prod_t = alphas_cumprod_[t];
  const at::Tensor alpha_prod_t_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : final_alpha_cumprod_;
  const at::Tensor beta_prod_t = at::rsub(alpha_prod_t, 1);

  // 3. The predicted x0 ("predicted x_0" of formula (12)) and noise.
  at::Tensor pred_original_sample, pred_epsilon;
  if (config_.prediction_type == "epsilon") {
    pred_original_sample = (sample - at::pow(beta_prod_t, 0.5) * model_output) / at::pow(alpha_prod_t, 0.5);
    pred_epsilon = model_output;
  } else if (config_.prediction_type == "sample") {
    pred_original_sample = model_output;
    pred_epsilon = (sample - at::pow(alpha_prod_t, 0.5) * pred_original_sample) / at::pow(beta_prod_t, 0.5);
  } else {  // v_prediction
    pred_original_sample = at::pow(alpha_prod_t, 0.5) * sample - at::pow(beta_prod_t, 0.5) * model_output;
    pred_epsilon = at::pow(alpha_prod_t, 0.5) * model_output + at::pow(beta_prod_t, 0.5) * sample;
  }

  // 4. Clip or threshold x0.
  if (config_.thresholding) {
    pred_original_sample =
        threshold_sample(pred_original_sample, config_.dynamic_thresholding_ratio, config_.sample_max_value);
  } else if (config_.clip_sample) {
    pred_original_sample = pred_original_sample.clamp(-config_.clip_sample_range, config_.clip_sample_range);
  }

  // 5. sigma_t(eta) of formula (16).
  const at::Tensor beta_prod_t_prev = at::rsub(alpha_prod_t_prev, 1);
  const at::Tensor variance = (beta_prod_t_prev / beta_prod_t) * at::rsub(alpha_prod_t / alpha_prod_t_prev, 1);
  const at::Tensor std_dev_t = at::pow(variance, 0.5) * eta_;

  if (use_clipped_model_output_)  // Glide re-derives the noise from the clipped x0
    pred_epsilon = (sample - at::pow(alpha_prod_t, 0.5) * pred_original_sample) / at::pow(beta_prod_t, 0.5);

  // 6. The "direction pointing to x_t", 7. x_{t-1} without the random noise (formula (12)).
  const at::Tensor pred_sample_direction =
      at::pow(at::rsub(alpha_prod_t_prev, 1) - at::pow(std_dev_t, 2), 0.5) * pred_epsilon;
  at::Tensor prev_sample = at::pow(alpha_prod_t_prev, 0.5) * pred_original_sample + pred_sample_direction;

  if (eta_ > 0) {
    const at::Tensor variance_noise = randn_tensor(
        model_output.sizes(), std::move(generator), model_output.options());
    prev_sample = prev_sample + std_dev_t * variance_noise;
  }
  return prev_sample;
}

}  // namespace diffuse
