#pragma once
// diffusers' EulerDiscreteScheduler: Euler's method on the probability-flow ODE in k-diffusion's sigma
// parameterization (Karras et al. 2022, algorithm 2). The sample lives at noise level sigma (the
// model sees it scaled by 1 / sqrt(sigma^2 + 1)); each step moves it to the next sigma along
// (x - x0) / sigma. With s_churn > 0 a step first adds noise, drawn from the step's generator.

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <string>

#include "diffuse/schedulers/ddpm_schedule.hpp"
#include "diffuse/schedulers/scheduler.hpp"

namespace diffuse {

// EulerDiscreteScheduler's config keys, with diffusers' defaults.
struct EulerDiscreteSchedulerConfig : BetaScheduleConfig {
  std::string prediction_type = "epsilon";  // or "v_prediction", "sample"
  std::string interpolation_type = "linear";  // or "log_linear"
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_beta_sigmas = false;  // refused: it needs scipy's beta.ppf
  std::optional<double> sigma_min, sigma_max;  // the ends of karras/exponential schedules
  std::string timestep_spacing = "linspace";  // or "leading", "trailing"
  std::string timestep_type = "discrete";  // or "continuous" (EDM-style v-prediction)
  int64_t steps_offset = 0;
  bool rescale_betas_zero_snr = false;
  std::string final_sigmas_type = "zero";  // or "sigma_min"

  static EulerDiscreteSchedulerConfig from_json(const JsonConfig& json);
  nlohmann::json to_json() const;
};

// step()'s keyword arguments in diffusers ("churn": noise added before the step, for sigmas within
// [s_tmin, s_tmax]). Pipelines pass none, so the defaults add nothing and draw no noise.
struct EulerChurn {
  double s_churn = 0.0;
  double s_tmin = 0.0;
  double s_tmax = std::numeric_limits<double>::infinity();
  double s_noise = 1.0;
};

class EulerDiscreteScheduler : public Scheduler {
 public:
  using Config = EulerDiscreteSchedulerConfig;

  // Throws diffuse::Error for an option diffusers refuses or this port does not implement.
  explicit EulerDiscreteScheduler(EulerDiscreteSchedulerConfig config = {});
  static EulerDiscreteScheduler from_config(const nlohmann::json& config,
                                            const std::string& source = "EulerDiscreteScheduler config");
  static EulerDiscreteScheduler from_pretrained(const std::filesystem::path& folder);

  std::string class_name() const override { return "EulerDiscreteScheduler"; }
  // float32 fractional training timesteps, descending.
  const at::Tensor& timesteps() const override { return timesteps_; }
  // The largest sigma (with "leading" spacing: sqrt(sigma_max^2 + 1)).
  double init_noise_sigma() const override;
  // sample / sqrt(sigma^2 + 1) at the timestep's sigma.
  at::Tensor scale_model_input(const at::Tensor& sample, double timestep) override;
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<EulerDiscreteScheduler>(*this); }

  void set_churn(const EulerChurn& churn) { churn_ = churn; }
  // The step to start from, instead of finding the first timestep given (image-to-image pipelines).
  void set_begin_index(int64_t begin_index) { begin_index_ = begin_index; }
  std::optional<int64_t> step_index() const { return step_index_; }

  const EulerDiscreteSchedulerConfig& config() const { return config_; }
  // float32, one more than timesteps(): the last is the final sigma (0 by default).
  const at::Tensor& sigmas() const { return sigmas_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

 protected:
  // options.sigmas, when given, are num_inference_steps + 1 noise levels, the last the final one;
  // the timesteps are found from them. mu is refused.
  void set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) override;
  at::Tensor step_impl(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                       std::optional<at::Generator> generator) override;

 private:
  void init_step_index(double timestep);

  EulerDiscreteSchedulerConfig config_;
  at::Tensor alphas_cumprod_;
  at::Tensor timesteps_, sigmas_;
  int64_t num_inference_steps_ = 0;
  std::optional<int64_t> step_index_, begin_index_;
  EulerChurn churn_;
};

}  // namespace diffuse
