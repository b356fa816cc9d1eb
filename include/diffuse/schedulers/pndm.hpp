#pragma once
// diffusers' PNDMScheduler: pseudo numerical methods for diffusion models (Liu et al. 2022), the
// scheduler Stable Diffusion 1.5 ships with. With skip_prk_steps (SD's config) it is PLMS: a linear
// multistep method over the past model outputs, started by a second-order step that calls the model
// twice at one timestep, so n inference steps are n + 1 model calls (timesteps() repeats one entry).
// Without skip_prk_steps, three Runge-Kutta steps (12 model calls) warm up the history first.
//
//   PNDMScheduler scheduler = PNDMScheduler::from_pretrained(dir / "scheduler");
//   scheduler.set_timesteps(4);                      // timesteps() = [751, 501, 501, 251, 1] for SD 1.5
//   for (int64_t i = 0; i < scheduler.timesteps().size(0); ++i) { t = ...; x = scheduler.step(eps, t, x); }

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/schedulers/ddpm_schedule.hpp"
#include "diffuse/schedulers/scheduler.hpp"

namespace diffuse {

// PNDMScheduler's config keys, with diffusers' defaults (SD 1.5's file sets scaled_linear betas
// 0.00085..0.012, skip_prk_steps, steps_offset 1).
struct PNDMSchedulerConfig : BetaScheduleConfig {
  bool skip_prk_steps = false;
  bool set_alpha_to_one = false;
  std::string prediction_type = "epsilon";  // or "v_prediction"
  std::string timestep_spacing = "leading";  // or "linspace", "trailing"
  int64_t steps_offset = 0;

  static PNDMSchedulerConfig from_json(const JsonConfig& json);
  nlohmann::json to_json() const;
};

class PNDMScheduler : public Scheduler {
 public:
  using Config = PNDMSchedulerConfig;

  // Throws diffuse::Error for an unknown beta_schedule, prediction_type or timestep_spacing.
  explicit PNDMScheduler(PNDMSchedulerConfig config = {});
  // diffusers' from_config (see make_scheduler); `source` names the config in errors.
  static PNDMScheduler from_config(const nlohmann::json& config, const std::string& source = "PNDMScheduler config");
  // Reads `folder`/scheduler_config.json.
  static PNDMScheduler from_pretrained(const std::filesystem::path& folder);

  std::string class_name() const override { return "PNDMScheduler"; }
  // int64; empty before set_timesteps.
  const at::Tensor& timesteps() const override { return timesteps_; }
  double init_noise_sigma() const override { return 1.0; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<PNDMScheduler>(*this); }

  const PNDMSchedulerConfig& config() const { return config_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }  // float32, one per training step
  int64_t num_inference_steps() const { return num_inference_steps_; }
  // How many of timesteps() are Runge-Kutta steps (0 with skip_prk_steps); the rest are PLMS steps.
  int64_t num_prk_steps() const { return static_cast<int64_t>(prk_timesteps_.size()); }

 protected:
  // Refuses sigmas and mu. Without skip_prk_steps, needs at least 4 steps (as diffusers does).
  void set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) override;
  // `timestep` must be the next entry of timesteps(); the generator is not used (PNDM is deterministic).
  at::Tensor step_impl(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                       std::optional<at::Generator> generator) override;

 private:
  at::Tensor step_prk(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample);
  at::Tensor step_plms(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample);
  // Formula (9) of the paper: the sample at prev_timestep from the one at timestep.
  at::Tensor prev_sample(const at::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                         const at::Tensor& model_output) const;

  PNDMSchedulerConfig config_;
  at::Tensor alphas_cumprod_, final_alpha_cumprod_;  // float32; the latter a 0-dim tensor
  int64_t num_inference_steps_ = 0;
  std::vector<int64_t> prk_timesteps_, plms_timesteps_;
  at::Tensor timesteps_;
  // The running state, reset by set_timesteps.
  at::Tensor cur_model_output_;  // the Runge-Kutta sum so far; undefined for diffusers' 0
  at::Tensor cur_sample_;
  std::vector<at::Tensor> ets_;  // past model outputs, the last four kept
  int64_t counter_ = 0;
};

}  // namespace diffuse
