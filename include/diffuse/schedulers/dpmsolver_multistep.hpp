#pragma once
// diffusers' DPMSolverMultistepScheduler: DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al.
// 2022b), fast high-order solvers of the diffusion ODE in log-SNR time. The default (dpmsolver++,
// solver_order 2, midpoint) is "DPM++ 2M": each step combines the current and the previous data
// predictions; the first step, and the last (lower_order_final, final_sigmas_type zero), are first
// order. The SDE variants draw noise from the step's generator on every step.
//
// Implemented: algorithm_type dpmsolver++ / dpmsolver / sde-dpmsolver++ / sde-dpmsolver (and deis,
// which diffusers maps to dpmsolver++), solver_order 1-3, solver_type midpoint / heun (logrho, bh1,
// bh2 map to midpoint), prediction_type epsilon / sample / v_prediction / flow_prediction,
// thresholding, variance_type learned(_range), karras / exponential / lu-lambda / flow sigmas, dynamic
// shifting (mu), lambda_min_clipped, euler_at_final, every timestep_spacing. Refused with an error:
// use_beta_sigmas (needs scipy), and the combinations diffusers itself refuses.

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/schedulers/ddpm_schedule.hpp"
#include "diffuse/schedulers/scheduler.hpp"

namespace diffuse {

// DPMSolverMultistepScheduler's config keys, with diffusers' defaults.
struct DPMSolverMultistepSchedulerConfig : BetaScheduleConfig {
  int64_t solver_order = 2;
  std::string prediction_type = "epsilon";  // or "sample", "v_prediction", "flow_prediction"
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double sample_max_value = 1.0;
  std::string algorithm_type = "dpmsolver++";  // or "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"
  std::string solver_type = "midpoint";  // or "heun"
  bool lower_order_final = true;
  bool euler_at_final = false;
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_beta_sigmas = false;  // refused: it needs scipy's beta.ppf
  bool use_lu_lambdas = false;
  bool use_flow_sigmas = false;
  double flow_shift = 1.0;
  std::string final_sigmas_type = "zero";  // or "sigma_min"
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();
  std::optional<std::string> variance_type;  // "learned" or "learned_range": the model also predicts variance
  std::string timestep_spacing = "linspace";  // or "leading", "trailing"
  int64_t steps_offset = 0;
  bool rescale_betas_zero_snr = false;
  bool use_dynamic_shifting = false;
  std::string time_shift_type = "exponential";

  // Also maps the aliases diffusers maps (algorithm_type deis -> dpmsolver++; solver_type logrho,
  // bh1, bh2 -> midpoint).
  static DPMSolverMultistepSchedulerConfig from_json(const JsonConfig& json);
  nlohmann::json to_json() const;
};

class DPMSolverMultistepScheduler : public Scheduler {
 public:
  using Config = DPMSolverMultistepSchedulerConfig;

  // Throws diffuse::Error naming the key and value of an option diffusers refuses or this port does
  // not implement.
  explicit DPMSolverMultistepScheduler(DPMSolverMultistepSchedulerConfig config = {});
  static DPMSolverMultistepScheduler from_config(const nlohmann::json& config,
                                                 const std::string& source = "DPMSolverMultistepScheduler config");
  static DPMSolverMultistepScheduler from_pretrained(const std::filesystem::path& folder);

  std::string class_name() const override { return "DPMSolverMultistepScheduler"; }
  // int64 after set_timesteps, descending.
  const at::Tensor& timesteps() const override { return timesteps_; }
  double init_noise_sigma() const override { return 1.0; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<DPMSolverMultistepScheduler>(*this); }

  // The step to start from, instead of finding the first timestep given (image-to-image pipelines).
  void set_begin_index(int64_t begin_index) { begin_index_ = begin_index; }
  std::optional<int64_t> step_index() const { return step_index_; }

  const DPMSolverMultistepSchedulerConfig& config() const { return config_; }
  // float32, one more than timesteps(): the last is the final sigma (0 by default).
  const at::Tensor& sigmas() const { return sigmas_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }
  int64_t num_inference_steps() const { return num_inference_steps_; }

 protected:
  // options.mu (with use_dynamic_shifting) sets flow_shift = exp(mu); sigmas are refused.
  void set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) override;
  // The SDE algorithms draw float32 noise of model_output's shape and device from `generator`.
  at::Tensor step_impl(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                       std::optional<at::Generator> generator) override;

 private:
  // (alpha_t, sigma_t) of the diffusion at noise level sigma (0-dim tensors).
  std::pair<at::Tensor, at::Tensor> alpha_sigma(const at::Tensor& sigma) const;
  // The model output as the solver wants it: the data prediction x0 (DPM-Solver++) or the noise.
  at::Tensor convert_model_output(const at::Tensor& model_output, const at::Tensor& sample) const;
  at::Tensor first_order_update(const at::Tensor& model_output, const at::Tensor& sample,
                                const at::Tensor& noise) const;
  at::Tensor second_order_update(const at::Tensor& sample, const at::Tensor& noise) const;
  at::Tensor third_order_update(const at::Tensor& sample, const at::Tensor& noise) const;
  // Where a karras/exponential schedule ends: the config's sigma_min / sigma_max when a config this
  // was made from carries them (diffusers reads them off its config too), else the training schedule's.
  std::optional<double> carried_sigma(const char* key) const;

  DPMSolverMultistepSchedulerConfig config_;
  at::Tensor alphas_cumprod_, lambda_t_;  // float32, one per training step
  at::Tensor timesteps_, sigmas_;
  double flow_shift_;
  int64_t num_inference_steps_ = 0;
  // The running state, reset by set_timesteps.
  std::vector<at::Tensor> model_outputs_;  // the last solver_order converted outputs, oldest first
  int64_t lower_order_nums_ = 0;
  std::optional<int64_t> step_index_, begin_index_;
};

}  // namespace diffuse
