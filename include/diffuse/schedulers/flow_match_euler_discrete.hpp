#pragma once
// diffusers' FlowMatchEulerDiscreteScheduler: the Euler solver of the rectified-flow ODE that FLUX.1
// samples with. set_timesteps builds the noise levels (sigmas, 1 -> 0) with the same arithmetic as
// diffusers, float32 where numpy works in float32, so that timesteps match bit for bit; step moves a
// sample from sigma_i to sigma_{i+1} along the model's velocity.
//
//   auto scheduler = FlowMatchEulerDiscreteScheduler::from_pretrained(dir / "scheduler");
//   const auto& c = scheduler.config();
//   double mu = calculate_shift(flux_image_seq_len(height, width), c.base_image_seq_len,
//                               c.max_image_seq_len, c.base_shift, c.max_shift);
//   scheduler.set_timesteps(steps, mu, flux_sigmas(steps));  // flux_sigmas: pipelines/flux_latents.hpp
//   for (int64_t i = 0; i < steps; ++i)
//     latents = scheduler.step(transformer(latents, scheduler.timesteps()[i] / 1000), i, latents);
//
// It is also a Scheduler (scheduler.hpp): through that interface, set_timesteps takes
// {.mu, .sigmas} and step takes the timestep, tracking the step index as diffusers does. The two
// members of the same names here (by step index, and with mu and sigmas as arguments) hide the
// interface's on this class; call them through a Scheduler& to step by timestep.

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/io/json_config.hpp"
#include "diffuse/schedulers/numpy_ops.hpp"
#include "diffuse/schedulers/scheduler.hpp"

namespace diffuse {

// diffusers' FlowMatchEulerDiscreteScheduler config keys, with its defaults.
struct FlowMatchEulerDiscreteSchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = false;
  double base_shift = 0.5;
  double max_shift = 1.15;
  int64_t base_image_seq_len = 256;
  int64_t max_image_seq_len = 4096;
  bool invert_sigmas = false;
  std::optional<double> shift_terminal;
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_beta_sigmas = false;
  std::string time_shift_type = "exponential";  // or "linear"
  bool stochastic_sampling = false;

  // Throws diffuse::Error naming the key (and the file) for a wrong type or an unknown time_shift_type.
  static FlowMatchEulerDiscreteSchedulerConfig from_json(const JsonConfig& json);
  static FlowMatchEulerDiscreteSchedulerConfig from_file(const std::filesystem::path& file);
  nlohmann::json to_json() const;
};

// FluxPipeline's calculate_shift: mu grows linearly with the image token count, from base_shift at
// base_seq_len to max_shift at max_seq_len (and beyond, unclamped).
double calculate_shift(int64_t image_seq_len, int64_t base_seq_len = 256, int64_t max_seq_len = 4096,
                       double base_shift = 0.5, double max_shift = 1.15);

class FlowMatchEulerDiscreteScheduler : public Scheduler {
 public:
  using Config = FlowMatchEulerDiscreteSchedulerConfig;

  // Throws diffuse::Error for a config diffusers would refuse (unknown time_shift_type, more than one of
  // the karras/exponential/beta options) and for use_beta_sigmas, which this port does not implement.
  explicit FlowMatchEulerDiscreteScheduler(FlowMatchEulerDiscreteSchedulerConfig config = {});
  // Reads `folder`/scheduler_config.json.
  static FlowMatchEulerDiscreteScheduler from_pretrained(const std::filesystem::path& folder);
  // diffusers' from_config (see make_scheduler); `source` names the config in errors.
  static FlowMatchEulerDiscreteScheduler from_config(
      const nlohmann::json& config, const std::string& source = "FlowMatchEulerDiscreteScheduler config");

  std::string class_name() const override { return "FlowMatchEulerDiscreteScheduler"; }
  double init_noise_sigma() const override { return 1.0; }
  std::unique_ptr<Scheduler> clone() const override {
    return std::make_unique<FlowMatchEulerDiscreteScheduler>(*this);
  }

  // Builds `num_inference_steps` timesteps. `mu` is required when the config uses dynamic shifting
  // (and ignored otherwise). `sigmas`, when given, are the unshifted schedule (FluxPipeline passes
  // linspace(1, 1/n, n)); their count must equal num_inference_steps. Without them the schedule is
  // diffusers' default: linspace over [sigma_max, sigma_min] of the training schedule. Resets the
  // step index that stepping by timestep keeps.
  void set_timesteps(int64_t num_inference_steps, std::optional<double> mu = std::nullopt,
                     std::optional<std::vector<double>> sigmas = std::nullopt);

  // float32, on the CPU. timesteps = sigmas * num_train_timesteps, one per step; sigmas has one more
  // entry, the terminal 0 (1 with invert_sigmas). Before set_timesteps: the training schedule.
  const at::Tensor& timesteps() const override { return timesteps_; }
  const at::Tensor& sigmas() const { return sigmas_; }
  int64_t num_inference_steps() const { return num_inference_steps_; }

  // The step whose timestep equals `timestep` (the second of two equal ones, as diffusers picks);
  // throws when the schedule lacks it.
  int64_t index_for_timestep(double timestep) const;

  // One Euler step from sigmas[step_index] to sigmas[step_index + 1]:
  // sample + (sigma_next - sigma) * model_output, added in float32 and returned in model_output's dtype.
  // With stochastic_sampling, the step re-noises x0 instead, drawing noise from `generator` (or the
  // default generator) as diffusers' randn_tensor does.
  at::Tensor step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample,
                  std::optional<at::Generator> generator = std::nullopt) const;

  // The fixed shift used without dynamic shifting (diffusers' set_shift).
  double shift() const { return shift_; }
  void set_shift(double shift) { shift_ = shift; }

  const FlowMatchEulerDiscreteSchedulerConfig& config() const { return config_; }

  // Stepping by timestep (the Scheduler interface): the step to start from instead of the one the
  // first timestep names (image-to-image pipelines), and the step the next call takes.
  void set_begin_index(int64_t begin_index) { begin_index_ = begin_index; }
  std::optional<int64_t> step_index() const { return step_index_; }

 protected:
  // set_timesteps(n, options.mu, options.sigmas).
  void set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) override;
  // step(model_output, step index, sample, generator) at the step the timestep names (found on the
  // first call, as diffusers' index_for_timestep), then advances the step index.
  at::Tensor step_impl(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                       std::optional<at::Generator> generator) override;

 private:
  FlowMatchEulerDiscreteSchedulerConfig config_;
  double shift_;
  double sigma_min_, sigma_max_;  // of the training schedule, as Python floats
  int64_t num_inference_steps_ = 0;
  at::Tensor timesteps_, sigmas_;
  std::optional<int64_t> step_index_, begin_index_;
};

}  // namespace diffuse
