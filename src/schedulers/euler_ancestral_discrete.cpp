#include "diffuse/schedulers/euler_ancestral_discrete.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/pipelines/flux_latents.hpp"  // randn_tensor
#include "diffuse/schedulers/numpy_ops.hpp"

namespace diffuse {

namespace {

const char* const kWho = "EulerAncestralDiscreteScheduler";

std::vector<double> to_doubles(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

EulerAncestralDiscreteSchedulerConfig EulerAncestralDiscreteSchedulerConfig::from_json(const JsonConfig& json) {
  EulerAncestralDiscreteSchedulerConfig c;
  c.read(json);
  c.prediction_type = json.get_string("prediction_type", c.prediction_type);
  c.timestep_spacing = json.get_string("timestep_spacing", c.timestep_spacing);
  c.steps_offset = json.get_int("steps_offset", c.steps_offset);
  c.rescale_betas_zero_snr = json.get_bool("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  return c;
}

nlohmann::json EulerAncestralDiscreteSchedulerConfig::to_json() const {
  nlohmann::json json = nlohmann::json::object();
  write(json);
  json["prediction_type"] = prediction_type;
  json["timestep_spacing"] = timestep_spacing;
  json["steps_offset"] = steps_offset;
  json["rescale_betas_zero_snr"] = rescale_betas_zero_snr;
  return json;
}

EulerAncestralDiscreteScheduler::EulerAncestralDiscreteScheduler(EulerAncestralDiscreteSchedulerConfig config)
    : Scheduler(kWho, config.to_json(), EulerAncestralDiscreteSchedulerConfig{}.to_json()),
      config_(std::move(config)) {
  const auto& c = config_;
  if (c.prediction_type == "sample")
    throw Error(std::string(kWho) + ": prediction_type 'sample' is not implemented (diffusers neither)");
  check_choice(kWho, "prediction_type", c.prediction_type, {"epsilon", "v_prediction"});
  check_choice(kWho, "timestep_spacing", c.timestep_spacing, {"linspace", "leading", "trailing"});

  at::Tensor betas = make_betas(c, kWho);
  if (c.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  alphas_cumprod_ = alphas_cumprod_of(betas);
  // Close to 0 without being 0, so that the first sigma is not infinite (fp16's smallest subnormal).
  if (c.rescale_betas_zero_snr) alphas_cumprod_[-1].fill_(std::ldexp(1.0, -24));

  // Before set_timesteps: every training step, from the noisiest.
  sigmas_ = at::cat({sigmas_of(alphas_cumprod_).flip(0), at::zeros({1}, at::kFloat)});
  const int64_t n = c.num_train_timesteps;
  std::vector<float> t;
  for (double v : numpy_linspace(0, static_cast<double>(n - 1), n)) t.push_back(static_cast<float>(v));
  std::reverse(t.begin(), t.end());
  timesteps_ = at::tensor(t, at::kFloat);
}

EulerAncestralDiscreteScheduler EulerAncestralDiscreteScheduler::from_config(const nlohmann::json& config,
                                                                             const std::string& source) {
  return made_from<EulerAncestralDiscreteScheduler>(config, source);
}

EulerAncestralDiscreteScheduler EulerAncestralDiscreteScheduler::from_pretrained(const std::filesystem::path& folder) {
  const std::filesystem::path file = folder / "scheduler_config.json";
  return from_config(JsonConfig::load(file).json(), file.string());
}

double EulerAncestralDiscreteScheduler::init_noise_sigma() const {
  const at::Tensor max_sigma = sigmas_.max();
  if (config_.timestep_spacing == "linspace" || config_.timestep_spacing == "trailing")
    return max_sigma.item<double>();
  return at::pow(at::pow(max_sigma, 2) + 1, 0.5).item<double>();
}

void EulerAncestralDiscreteScheduler::set_timesteps_impl(int64_t num_inference_steps,
                                                         const TimestepOptions& options) {
  const std::string where = std::string(kWho) + "::set_timesteps";
  const auto& c = config_;
  const int64_t n = num_inference_steps;
  if (n < 1) throw Error(where + ": num_inference_steps must be positive, got " + std::to_string(n));
  if (options.sigmas) throw Error(where + ": this scheduler takes no sigmas (use EulerDiscreteScheduler for that)");
  if (options.mu) throw Error(where + ": this scheduler takes no mu (it has no dynamic shifting)");

  std::vector<double> timesteps;  // float32 values
  for (double v : spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset, kWho))
    timesteps.push_back(static_cast<float>(v));
  // np.interp over the float32 training sigmas, in float64; then a final 0, all cast to float32.
  const std::vector<double> fp = to_doubles(sigmas_of(alphas_cumprod_));
  std::vector<double> xp(fp.size());
  for (size_t i = 0; i < xp.size(); ++i) xp[i] = static_cast<double>(i);
  std::vector<float> sigmas;
  for (double s : numpy_interp(timesteps, xp, fp)) sigmas.push_back(static_cast<float>(s));
  sigmas.push_back(0.0f);

  sigmas_ = at::tensor(sigmas, at::kFloat);
  timesteps_ = at::tensor(std::vector<float>(timesteps.begin(), timesteps.end()), at::kFloat);
  step_index_.reset();
  begin_index_.reset();
}

void EulerAncestralDiscreteScheduler::init_step_index(double timestep) {
  if (begin_index_) {
    step_index_ = *begin_index_;
    return;
  }
  step_index_ = find_timestep(timesteps_, timestep);
  if (!step_index_)
    throw Error(std::string(kWho) + ": timestep " + std::to_string(timestep) +
                " is not in the schedule; pass the entries of timesteps()");
}

at::Tensor EulerAncestralDiscreteScheduler::scale_model_input(const at::Tensor& sample, double timestep) {
  if (!step_index_) init_step_index(timestep);
  if (*step_index_ < 0 || *step_index_ >= sigmas_.size(0))
    throw Error(std::string(kWho) + "::scale_model_input: step " + std::to_string(*step_index_) +
                " is past the schedule's end");
  const at::Tensor sigma = sigmas_[*step_index_];
  return sample / at::pow(at::pow(sigma, 2) + 1, 0.5);
}

at::Tensor EulerAncestralDiscreteScheduler::step_impl(const at::Tensor& model_output, double timestep,
                                                      const at::Tensor& sample,
                                                      std::optional<at::Generator> generator) {
  const std::string where = std::string(kWho) + "::step";
  if (model_output.sizes() != sample.sizes())
    throw Error(where + ": model_output " + c10::str(model_output.sizes()) + " and sample " +
                c10::str(sample.sizes()) + " differ in shape");
  if (!step_index_) init_step_index(timestep);
  const int64_t i = *step_index_;
  if (i < 0 || i + 1 >= sigmas_.size(0))
    throw Error(where + ": step " + std::to_string(i) + " is past the schedule's end; call set_timesteps again");

  const at::Tensor sigma = sigmas_[i];  // 0-dim float32, as diffusers indexes it
  const at::Tensor x = sample.to(at::kFloat);  // diffusers upcasts "to avoid precision issues"

  // 1. The predicted x0 from the sigma-scaled prediction.
  at::Tensor pred_original_sample;
  if (config_.prediction_type == "epsilon") {
    pred_original_sample = x - sigma * model_output;
  } else {  // v_prediction: model_output * c_out + input * c_skip
    pred_original_sample =
        model_output * (-sigma / at::pow(at::pow(sigma, 2) + 1, 0.5)) + (x / (at::pow(sigma, 2) + 1));
  }

  // The ancestral split of the move to sigma_to: deterministically down to sigma_down, then noise of
  // standard deviation sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2.
  const at::Tensor sigma_from = sigmas_[i], sigma_to = sigmas_[i + 1];
  const at::Tensor sigma_up =
      at::pow(at::pow(sigma_to, 2) * (at::pow(sigma_from, 2) - at::pow(sigma_to, 2)) / at::pow(sigma_from, 2), 0.5);
  const at::Tensor sigma_down = at::pow(at::pow(sigma_to, 2) - at::pow(sigma_up, 2), 0.5);

  // 2. The ODE derivative, an Euler step to sigma_down, then the noise.
  const at::Tensor derivative = (x - pred_original_sample) / sigma;
  const at::Tensor dt = sigma_down - sigma;
  at::Tensor prev_sample = x + derivative * dt;
  const at::Tensor noise = randn_tensor(model_output.sizes(), std::move(generator), model_output.options());
  prev_sample = prev_sample + noise * sigma_up;

  step_index_ = i + 1;
  return prev_sample.to(model_output.scalar_type());
}

}  // namespace diffuse
