#pragma once
// The interface every scheduler implements (diffusers' SchedulerMixin), and the registry that makes one
// from a scheduler_config.json's `_class_name` or from a name a user picks.
//
// A pipeline's denoising loop, as diffusers' pipelines write it:
//
//   std::unique_ptr<Scheduler> scheduler = load_scheduler(dir / "scheduler");
//   // or, as X.from_config(pipe.scheduler.config): make_scheduler("euler_a", scheduler->config())
//   scheduler->set_timesteps(steps);                        // {.mu = ..., .sigmas = ...} for flow match
//   latents = latents * scheduler->init_noise_sigma();
//   const at::Tensor timesteps = scheduler->timesteps();
//   for (int64_t i = 0; i < timesteps.size(0); ++i) {
//     const double t = timesteps[i].item<double>();
//     at::Tensor input = scheduler->scale_model_input(latents, t);
//     at::Tensor noise_pred = unet(input, t, ...);
//     latents = scheduler->step(noise_pred, t, latents, generator);
//   }
//
// Schedulers are stateful, as diffusers' are: step() advances a step index (found from the first
// timestep it is given) and keeps what multistep solvers need (PNDM's past model outputs, DPM-Solver's
// previous data predictions); set_timesteps() starts over. clone() gives an independent copy, so one
// loaded scheduler can serve several concurrent calls.

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "diffuse/io/json_config.hpp"

namespace diffuse {

// What a pipeline may hand set_timesteps beyond the step count.
struct TimestepOptions {
  // The dynamic shift of flow-match schedules (FluxPipeline's calculate_shift), where the config has
  // use_dynamic_shifting; DPMSolverMultistepScheduler takes it too (flow_shift = exp(mu)).
  std::optional<double> mu;
  // A schedule of noise levels to use instead of the scheduler's own: FlowMatchEulerDiscreteScheduler
  // takes num_inference_steps of them (without the terminal 0), EulerDiscreteScheduler
  // num_inference_steps + 1 (with it). The others refuse them.
  std::optional<std::vector<double>> sigmas;
};

class Scheduler {
 public:
  virtual ~Scheduler();

  // The diffusers class this ports, e.g. "PNDMScheduler": the `_class_name` that selects it.
  virtual std::string class_name() const = 0;

  // Builds the inference schedule and resets the step state. Throws diffuse::Error for a step count
  // below 1 and for options the scheduler cannot use (naming them).
  void set_timesteps(int64_t num_inference_steps, const TimestepOptions& options = {}) {
    set_timesteps_impl(num_inference_steps, options);
  }

  // The timesteps the denoiser is called at, in order; on the CPU. int64 for PNDM, DDIM and
  // DPM-Solver, float32 for flow match and the Euler schedulers, as diffusers holds them. PNDM's may
  // repeat a timestep (PLMS calls the model twice at the second one).
  virtual const at::Tensor& timesteps() const = 0;

  // The standard deviation of the initial noise: pipelines multiply the drawn latents by it.
  virtual double init_noise_sigma() const = 0;

  // The denoiser's input at `timestep` (one of timesteps()). The identity except for the Euler
  // schedulers, which divide by sqrt(sigma^2 + 1).
  virtual at::Tensor scale_model_input(const at::Tensor& sample, double /*timestep*/) { return sample; }

  // One step back from `timestep` (one of timesteps(), in order) given the denoiser's output there:
  // the sample at the next timestep, in model_output's dtype. Stochastic schedulers draw their noise
  // from `generator` as diffusers' randn_tensor does (on the generator's device, then moved), or from
  // the default generator without one.
  at::Tensor step(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                  std::optional<at::Generator> generator = std::nullopt) {
    return step_impl(model_output, timestep, sample, std::move(generator));
  }

  // diffusers' `order`: model calls per step of the underlying solver (1 for all of these).
  virtual int64_t order() const { return 1; }

  virtual std::unique_ptr<Scheduler> clone() const = 0;

  // The config as diffusers' scheduler.config holds it: every key this class reads with the value in
  // use, `_class_name`, `_use_default_values` (the keys that took defaults), and the other keys of the
  // config it was made from, kept for classes made from this one. (A concrete class's own config()
  // hides this one with its typed struct.)
  const nlohmann::json& config() const;

 protected:
  // `typed`: every key the class reads, with its value; `defaults`: the same for a default config.
  // Keys whose value is the default are listed in `_use_default_values`, as diffusers lists the
  // arguments a constructor was not given, so that a class made from this config uses its own.
  Scheduler(std::string class_name, const nlohmann::json& typed, const nlohmann::json& defaults);
  Scheduler(const Scheduler&) = default;
  Scheduler(Scheduler&&) = default;
  Scheduler& operator=(const Scheduler&) = default;
  Scheduler& operator=(Scheduler&&) = default;

  // What set_timesteps() and step() run. Those two are not virtual themselves so that a class may keep
  // members of the same names with other arguments (FlowMatchEulerDiscreteScheduler's step by index),
  // which would otherwise make calls ambiguous or silently pick the wrong overload.
  virtual void set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) = 0;
  virtual at::Tensor step_impl(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                               std::optional<at::Generator> generator) = 0;

  // As diffusers' from_config: the keys `given` lists in `_use_default_values` are dropped (they were
  // defaults of the class that wrote them), the rest are read by the caller from the JsonConfig this
  // returns. `source` names the config in errors.
  static JsonConfig readable_config(const nlohmann::json& given, const std::string& source);
  // Makes config() `given` (less the dropped keys) under this class's own keys and `_class_name`.
  void adopt_config(const nlohmann::json& given);

  // A concrete scheduler's from_config: S(S::Config::from_json(...)), then adopt_config.
  template <typename S>
  static S made_from(const nlohmann::json& config, const std::string& source) {
    S scheduler(S::Config::from_json(readable_config(config, source)));
    scheduler.adopt_config(config);
    return scheduler;
  }

 private:
  std::shared_ptr<const nlohmann::json> json_config_;  // shared between copies; replaced, never changed
};

// Reads `folder`/scheduler_config.json and makes the scheduler its `_class_name` names (SD 1.5's
// folder gives a PNDMScheduler). The error for a missing or unknown class lists the known ones.
std::unique_ptr<Scheduler> load_scheduler(const std::filesystem::path& folder);

// diffusers' X.from_config(config): a scheduler of the class `class_name_or_alias` names, made from
// `config` (another scheduler's config() or a scheduler_config.json's contents). Keys the class does
// not know are ignored (and kept in its config()); the `_class_name` inside `config` is ignored in
// favour of the name asked for. Names are diffusers' class names or these aliases (case and '-'/'_'
// ignored): pndm, plms, ddim, euler, euler_a / euler_ancestral, dpm++2m / dpmsolver++ /
// dpmsolver_multistep, flow_match / flow_match_euler. An unknown name is an error listing the known.
std::unique_ptr<Scheduler> make_scheduler(const std::string& class_name_or_alias, const nlohmann::json& config);

// Registers (or replaces) the factory for a class name, e.g. to add a scheduler from outside the
// library. A factory reads the keys it knows from the config, as the built-in from_config do.
using SchedulerFactory = std::function<std::unique_ptr<Scheduler>(const nlohmann::json& config)>;
void register_scheduler(const std::string& class_name, SchedulerFactory factory);

// The registered class names, sorted.
std::vector<std::string> scheduler_names();

}  // namespace diffuse
