#include "diffuse/schedulers/euler_discrete.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/pipelines/flux_latents.hpp"  // randn_tensor
#include "diffuse/schedulers/numpy_ops.hpp"

namespace diffuse {

namespace {

const char* const kWho = "EulerDiscreteScheduler";

std::vector<float> to_floats(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

}  // namespace

EulerDiscreteSchedulerConfig EulerDiscreteSchedulerConfig::from_json(const JsonConfig& json) {
  EulerDiscreteSchedulerConfig c;
  c.read(json);
  c.prediction_type = json.get_string("prediction_type", c.prediction_type);
  c.interpolation_type = json.get_string("interpolation_type", c.interpolation_type);
  c.use_karras_sigmas = json.get_bool("use_karras_sigmas", c.use_karras_sigmas);
  c.use_exponential_sigmas = json.get_bool("use_exponential_sigmas", c.use_exponential_sigmas);
  c.use_beta_sigmas = json.get_bool("use_beta_sigmas", c.use_beta_sigmas);
  c.sigma_min = json.get_optional_double("sigma_min");
  c.sigma_max = json.get_optional_double("sigma_max");
  c.timestep_spacing = json.get_string("timestep_spacing", c.timestep_spacing);
  c.timestep_type = json.get_string("timestep_type", c.timestep_type);
  c.steps_offset = json.get_int("steps_offset", c.steps_offset);
  c.rescale_betas_zero_snr = json.get_bool("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  c.final_sigmas_type = json.get_string("final_sigmas_type", c.final_sigmas_type);
  return c;
}

nlohmann::json EulerDiscreteSchedulerConfig::to_json() const {
  nlohmann::json json = nlohmann::json::object();
  write(json);
  json["prediction_type"] = prediction_type;
  json["interpolation_type"] = interpolation_type;
  json["use_karras_sigmas"] = use_karras_sigmas;
  json["use_exponential_sigmas"] = use_exponential_sigmas;
  json["use_beta_sigmas"] = use_beta_sigmas;
  json["sigma_min"] = sigma_min ? nlohmann::json(*sigma_min) : nlohmann::json(nullptr);
  json["sigma_max"] = sigma_max ? nlohmann::json(*sigma_max) : nlohmann::json(nullptr);
  json["timestep_spacing"] = timestep_spacing;
  json["timestep_type"] = timestep_type;
  json["steps_offset"] = steps_offset;
  json["rescale_betas_zero_snr"] = rescale_betas_zero_snr;
  json["final_sigmas_type"] = final_sigmas_type;
  return json;
}

EulerDiscreteScheduler::EulerDiscreteScheduler(EulerDiscreteSchedulerConfig config)
    : Scheduler(kWho, config.to_json(), EulerDiscreteSchedulerConfig{}.to_json()), config_(std::move(config)) {
  const auto& c = config_;
  check_choice(kWho, "prediction_type", c.prediction_type, {"epsilon", "v_prediction", "sample", "original_sample"});
  check_choice(kWho, "interpolation_type", c.interpolation_type, {"linear", "log_linear"});
  check_choice(kWho, "timestep_spacing", c.timestep_spacing, {"linspace", "leading", "trailing"});
  check_choice(kWho, "timestep_type", c.timestep_type, {"discrete", "continuous"});
  check_choice(kWho, "final_sigmas_type", c.final_sigmas_type, {"zero", "sigma_min"});
  if (int(c.use_beta_sigmas) + int(c.use_exponential_sigmas) + int(c.use_karras_sigmas) > 1)
    throw Error(std::string(kWho) +
                ": only one of use_beta_sigmas, use_exponential_sigmas and use_karras_sigmas can be set");
  if (c.use_beta_sigmas)
    throw Error(std::string(kWho) +
                ": use_beta_sigmas is not supported (it needs scipy's beta.ppf); use karras or exponential sigmas");

  at::Tensor betas = make_betas(c, kWho);
  if (c.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  alphas_cumprod_ = alphas_cumprod_of(betas);
  // Close to 0 without being 0, so that the first sigma is not infinite (fp16's smallest subnormal).
  if (c.rescale_betas_zero_snr) alphas_cumprod_[-1].fill_(std::ldexp(1.0, -24));

  // Before set_timesteps: every training step, from the noisiest.
  const at::Tensor sigmas = sigmas_of(alphas_cumprod_).flip(0);
  const int64_t n = c.num_train_timesteps;
  std::vector<float> t;
  for (double v : numpy_linspace(0, static_cast<double>(n - 1), n)) t.push_back(static_cast<float>(v));
  std::reverse(t.begin(), t.end());
  if (c.timestep_type == "continuous" && c.prediction_type == "v_prediction") {
    t.clear();
    for (float s : to_floats(sigmas)) t.push_back(0.25f * std::log(s));
  }
  timesteps_ = at::tensor(t, at::kFloat);
  sigmas_ = at::cat({sigmas, at::zeros({1}, at::kFloat)});
}

EulerDiscreteScheduler EulerDiscreteScheduler::from_config(const nlohmann::json& config, const std::string& source) {
  return made_from<EulerDiscreteScheduler>(config, source);
}

EulerDiscreteScheduler EulerDiscreteScheduler::from_pretrained(const std::filesystem::path& folder) {
  const std::filesystem::path file = folder / "scheduler_config.json";
  return from_config(JsonConfig::load(file).json(), file.string());
}

double EulerDiscreteScheduler::init_noise_sigma() const {
  const at::Tensor max_sigma = sigmas_.max();
  if (config_.timestep_spacing == "linspace" || config_.timestep_spacing == "trailing")
    return max_sigma.item<double>();
  return at::pow(at::pow(max_sigma, 2) + 1, 0.5).item<double>();
}

void EulerDiscreteScheduler::set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) {
  const std::string where = std::string(kWho) + "::set_timesteps";
  const auto& c = config_;
  const int64_t n = num_inference_steps;
  if (n < 1) throw Error(where + ": num_inference_steps must be positive, got " + std::to_string(n));
  if (options.mu) throw Error(where + ": this scheduler takes no mu (it has no dynamic shifting)");

  // The training sigmas as numpy holds them (float32, ascending with t) and their logs.
  const std::vector<float> train_sigmas = to_floats(sigmas_of(alphas_cumprod_));
  std::vector<float> log_sigmas;
  for (float s : train_sigmas) log_sigmas.push_back(std::log(s));

  std::vector<double> timesteps;  // float64 as numpy computes them; cast to float32 at the end
  std::vector<float> sigmas;
  if (options.sigmas) {
    if (static_cast<int64_t>(options.sigmas->size()) != n + 1)
      throw Error(where + ": got " + std::to_string(options.sigmas->size()) + " sigmas for " + std::to_string(n) +
                  " steps; give num_inference_steps + 1, the last the final sigma");
    sigmas.assign(options.sigmas->begin(), options.sigmas->end());  // np.array(sigmas).astype(np.float32)
    for (int64_t i = 0; i < n; ++i) timesteps.push_back(sigma_to_t(sigmas[static_cast<size_t>(i)], log_sigmas));
  } else {
    for (double v : spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset, kWho))
      timesteps.push_back(static_cast<float>(v));  // linspace is float32; leading/trailing cast to it

    std::vector<double> s;
    if (c.interpolation_type == "linear") {
      std::vector<double> xp(train_sigmas.size()), fp(train_sigmas.begin(), train_sigmas.end());
      for (size_t i = 0; i < xp.size(); ++i) xp[i] = static_cast<double>(i);
      s = numpy_interp(timesteps, xp, fp);
    } else {  // log_linear: torch.linspace over the log sigmas (float32), n + 1 of them, then exp
      const at::Tensor logs =
          torch_linspace(std::log(train_sigmas.back()), std::log(train_sigmas.front()), n + 1).exp();
      for (float v : to_floats(logs)) s.push_back(v);
    }

    if (c.use_karras_sigmas || c.use_exponential_sigmas) {
      const double lo = c.sigma_min.value_or(s.back()), hi = c.sigma_max.value_or(s.front());
      s = c.use_karras_sigmas ? karras_sigmas(lo, hi, n) : exponential_sigmas(lo, hi, n);
      timesteps.clear();
      for (double sigma : s) timesteps.push_back(sigma_to_t(sigma, log_sigmas));
    }

    const float sigma_last = c.final_sigmas_type == "sigma_min" ? train_sigmas.front() : 0.0f;
    sigmas.assign(s.begin(), s.end());
    sigmas.push_back(sigma_last);
  }

  std::vector<float> t;
  if (c.timestep_type == "continuous" && c.prediction_type == "v_prediction") {
    for (size_t i = 0; i + 1 < sigmas.size(); ++i) t.push_back(0.25f * std::log(sigmas[i]));
  } else {
    t.assign(timesteps.begin(), timesteps.end());
  }
  timesteps_ = at::tensor(t, at::kFloat);
  sigmas_ = at::tensor(sigmas, at::kFloat);
  num_inference_steps_ = n;
  step_index_.reset();
  begin_index_.reset();
}

void EulerDiscreteScheduler::init_step_index(double timestep) {
  if (begin_index_) {
    step_index_ = *begin_index_;
    return;
  }
  step_index_ = find_timestep(timesteps_, timestep);
  if (!step_index_)
    throw Error(std::string(kWho) + ": timestep " + std::to_string(timestep) +
                " is not in the schedule; pass the entries of timesteps()");
}

at::Tensor EulerDiscreteScheduler::scale_model_input(const at::Tensor& sample, double timestep) {
  if (!step_index_) init_step_index(timestep);
  if (*step_index_ < 0 || *step_index_ >= sigmas_.size(0))
    throw Error(std::string(kWho) + "::scale_model_input: step " + std::to_string(*step_index_) +
                " is past the schedule's end");
  const at::Tensor sigma = sigmas_[*step_index_];
  return sample / at::pow(at::pow(sigma, 2) + 1, 0.5);
}

at::Tensor EulerDiscreteScheduler::step_impl(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                                             std::optional<at::Generator> generator) {
  const std::string where = std::string(kWho) + "::step";
  if (model_output.sizes() != sample.sizes())
    throw Error(where + ": model_output " + c10::str(model_output.sizes()) + " and sample " +
                c10::str(sample.sizes()) + " differ in shape");
  if (!step_index_) init_step_index(timestep);
  const int64_t i = *step_index_;
  if (i < 0 || i + 1 >= sigmas_.size(0))
    throw Error(where + ": step " + std::to_string(i) + " is past the schedule's end; call set_timesteps again");

  at::Tensor x = sample.to(at::kFloat);  // diffusers upcasts "to avoid precision issues"
  const at::Tensor sigma = sigmas_[i];   // 0-dim float32, as diffusers indexes it
  const float sigma_value = sigma.item<float>();
  // Churn: torch compares the 0-dim float32 sigma with the bounds cast to float32.
  const double gamma =
      static_cast<float>(churn_.s_tmin) <= sigma_value && sigma_value <= static_cast<float>(churn_.s_tmax)
          ? std::min(churn_.s_churn / static_cast<double>(sigmas_.size(0) - 1), std::pow(2.0, 0.5) - 1)
          : 0.0;
  const at::Tensor sigma_hat = sigma * (gamma + 1);
  if (gamma > 0) {
    const at::Tensor noise = randn_tensor(model_output.sizes(), std::move(generator), model_output.options());
    const at::Tensor eps = noise * churn_.s_noise;
    x = x + eps * at::pow(at::pow(sigma_hat, 2) - at::pow(sigma, 2), 0.5);
  }

  // 1. The predicted x0 from the sigma-scaled prediction.
  at::Tensor pred_original_sample;
  if (config_.prediction_type == "epsilon") {
    pred_original_sample = x - sigma_hat * model_output;
  } else if (config_.prediction_type == "v_prediction") {
    // denoised = model_output * c_out + input * c_skip
    pred_original_sample =
        model_output * (-sigma / at::pow(at::pow(sigma, 2) + 1, 0.5)) + (x / (at::pow(sigma, 2) + 1));
  } else {  // "sample" (and the legacy "original_sample")
    pred_original_sample = model_output;
  }

  // 2. The ODE derivative, and one Euler step to the next sigma.
  const at::Tensor derivative = (x - pred_original_sample) / sigma_hat;
  const at::Tensor dt = sigmas_[i + 1] - sigma_hat;
  const at::Tensor prev_sample = x + derivative * dt;
  step_index_ = i + 1;
  return prev_sample.to(model_output.scalar_type());
}

}  // namespace diffuse
