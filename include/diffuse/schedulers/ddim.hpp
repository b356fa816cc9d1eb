#pragma once
// diffusers' DDIMScheduler: denoising diffusion implicit models (Song et al. 2020). Each step predicts
// x0 from the model output and moves to the previous timestep along formula (12); eta = 0 (the
// default) makes it deterministic, eta = 1 is DDPM's ancestral sampling, with its noise drawn from the
// step's generator.
//
//   auto scheduler = DDIMScheduler::from_config(sd_scheduler->config());   // as X.from_config
//   scheduler.set_eta(0.0);                                              // StableDiffusionPipeline's eta

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "diffuse/schedulers/ddpm_schedule.hpp"
#include "diffuse/schedulers/scheduler.hpp"

namespace diffuse {

// DDIMScheduler's config keys, with diffusers' defaults.
struct DDIMSchedulerConfig : BetaScheduleConfig {
  bool clip_sample = true;
  bool set_alpha_to_one = true;
  int64_t steps_offset = 0;
  std::string prediction_type = "epsilon";  // or "sample", "v_prediction"
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double clip_sample_range = 1.0;
  double sample_max_value = 1.0;
  std::string timestep_spacing = "leading";  // or "linspace", "trailing"
  bool rescale_betas_zero_snr = false;

  static DDIMSchedulerConfig from_json(const JsonConfig& json);
  nlohmann::json to_json() const;
};

class DDIMScheduler : public Scheduler {
 public:
  using Config = DDIMSchedulerConfig;

  // Throws diffuse::Error for an unknown beta_schedule, prediction_type or timestep_spacing.
  explicit DDIMScheduler(DDIMSchedulerConfig config = {});
  static DDIMScheduler from_config(const nlohmann::json& config, const std::string& source = "DDIMScheduler config");
  static DDIMScheduler from_pretrained(const std::filesystem::path& folder);

  std::string class_name() const override { return "DDIMScheduler"; }
  // int64, descending; before set_timesteps every training step.
  const at::Tensor& timesteps() const override { return timesteps_; }
  double init_noise_sigma() const override { return 1.0; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<DDIMScheduler>(*this); }

  // step()'s keyword arguments in diffusers, which a pipeline passes on every call: the weight of the
  // added noise (0: deterministic DDIM, 1: DDPM), and whether to re-derive the noise from the clipped x0.
  void set_eta(double eta);
  double eta() const { return eta_; }
  void set_use_clipped_model_output(bool use) { use_clipped_model_output_ = use; }

  const DDIMSchedulerConfig& config() const { return config_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }
  int64_t num_inference_steps() const { return num_inference_steps_; }

 protected:
  // Refuses sigmas, mu, and more steps than training steps (as diffusers does).
  void set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) override;
  // With eta > 0 draws the variance noise (model_output's shape, dtype and device) from `generator`.
  at::Tensor step_impl(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                       std::optional<at::Generator> generator) override;

 private:
  DDIMSchedulerConfig config_;
  at::Tensor alphas_cumprod_, final_alpha_cumprod_;
  int64_t num_inference_steps_ = 0;
  at::Tensor timesteps_;
  double eta_ = 0.0;
  bool use_clipped_model_output_ = false;
};

}  // namespace diffuse
