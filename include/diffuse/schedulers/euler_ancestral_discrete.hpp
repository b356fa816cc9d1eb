#pragma once
// diffusers' EulerAncestralDiscreteScheduler ("Euler a"): each step takes an Euler step down to a
// noise level below the next sigma, then adds fresh noise up to it (k-diffusion's ancestral sampling).
// The noise is drawn on every step, including the last, from the step's generator exactly as
// diffusers' randn_tensor draws it, so a seeded CPU generator (the same one the initial latents came
// from) gives diffusers' latents.

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "diffuse/schedulers/ddpm_schedule.hpp"
#include "diffuse/schedulers/scheduler.hpp"

namespace diffuse {

// EulerAncestralDiscreteScheduler's config keys, with diffusers' defaults.
struct EulerAncestralDiscreteSchedulerConfig : BetaScheduleConfig {
  std::string prediction_type = "epsilon";  // or "v_prediction"
  std::string timestep_spacing = "linspace";  // or "leading", "trailing"
  int64_t steps_offset = 0;
  bool rescale_betas_zero_snr = false;

  static EulerAncestralDiscreteSchedulerConfig from_json(const JsonConfig& json);
  nlohmann::json to_json() const;
};

class EulerAncestralDiscreteScheduler : public Scheduler {
 public:
  using Config = EulerAncestralDiscreteSchedulerConfig;

  // Throws diffuse::Error for an unknown option, and for prediction_type "sample" (which diffusers
  // leaves unimplemented).
  explicit EulerAncestralDiscreteScheduler(EulerAncestralDiscreteSchedulerConfig config = {});
  static EulerAncestralDiscreteScheduler from_config(
      const nlohmann::json& config, const std::string& source = "EulerAncestralDiscreteScheduler config");
  static EulerAncestralDiscreteScheduler from_pretrained(const std::filesystem::path& folder);

  std::string class_name() const override { return "EulerAncestralDiscreteScheduler"; }
  // float32 fractional training timesteps, descending.
  const at::Tensor& timesteps() const override { return timesteps_; }
  // The largest sigma (with "leading" spacing: sqrt(sigma_max^2 + 1)).
  double init_noise_sigma() const override;
  // sample / sqrt(sigma^2 + 1) at the timestep's sigma.
  at::Tensor scale_model_input(const at::Tensor& sample, double timestep) override;
  std::unique_ptr<Scheduler> clone() const override {
    return std::make_unique<EulerAncestralDiscreteScheduler>(*this);
  }

  // The step to start from, instead of finding the first timestep given (image-to-image pipelines).
  void set_begin_index(int64_t begin_index) { begin_index_ = begin_index; }
  std::optional<int64_t> step_index() const { return step_index_; }

  const EulerAncestralDiscreteSchedulerConfig& config() const { return config_; }
  // float32, one more than timesteps(), the last 0.
  const at::Tensor& sigmas() const { return sigmas_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

 protected:
  // Refuses sigmas and mu.
  void set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) override;
  // Draws noise of model_output's shape, dtype and device from `generator` on every call.
  at::Tensor step_impl(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                       std::optional<at::Generator> generator) override;

 private:
  void init_step_index(double timestep);

  EulerAncestralDiscreteSchedulerConfig config_;
  at::Tensor alphas_cumprod_;
  at::Tensor timesteps_, sigmas_;
  std::optional<int64_t> step_index_, begin_index_;
};

}  // namespace diffuse
