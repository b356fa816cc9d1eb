#pragma once
// The discrete noise schedule that the DDPM family (PNDM, DDIM, Euler, Euler ancestral, DPM-Solver)
// shares: the training betas, their cumulative alpha products, the inference timesteps spaced over the
// training steps, and the k-diffusion sigma conversions. Each piece runs the operations diffusers runs,
// in the same dtype: torch float32 ops (through ATen, so they round as torch does) where diffusers
// uses torch, and float64 numpy arithmetic (numpy_ops.hpp) where it uses numpy.

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "diffuse/io/json_config.hpp"

namespace diffuse {

// The training schedule's keys, with diffusers' defaults (the same in every DDPM-family scheduler).
struct BetaScheduleConfig {
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";  // or "scaled_linear" (SD), "squaredcos_cap_v2" (cosine)
  std::optional<std::vector<double>> trained_betas;  // given: overrides the three above

  // Reads the five keys; throws diffuse::Error naming the key for a wrong type or a value out of range.
  void read(const JsonConfig& json);
  // Writes them into `json` (a scheduler's config()).
  void write(nlohmann::json& json) const;
};

// torch.linspace(start, end, steps, dtype=torch.float32) as torch 2's CPU kernel computes every entry:
// in float32, start + step * i for the first half and end - step * (steps - 1 - i) for the second.
// (libtorch 1.13's vectorized kernel rounds some entries differently, and diffusers' numbers come
// from torch 2, so the schedules do not call at::linspace.)
at::Tensor torch_linspace(double start, double end, int64_t steps);

// float32 betas, as the schedulers' constructors make them: linspace, linspace of square roots then
// squared, the Glide cosine schedule, or trained_betas. `who` names the scheduler in errors.
at::Tensor make_betas(const BetaScheduleConfig& config, const std::string& who);

// diffusers' betas_for_alpha_bar with the cosine transform (squaredcos_cap_v2), float32.
at::Tensor betas_for_alpha_bar(int64_t num_diffusion_timesteps, double max_beta = 0.999);

// Rescales betas to zero terminal SNR (Lin et al. 2023, algorithm 1), float32.
at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas);

// cumprod(1 - betas), float32.
at::Tensor alphas_cumprod_of(const at::Tensor& betas);

// ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5 in float32: the sigma of each training step.
at::Tensor sigmas_of(const at::Tensor& alphas_cumprod);

// diffusers' timestep_spacing over num_train_timesteps, descending, in float64 before the scheduler's
// cast: "linspace" gives linspace(0, N - 1, n) unrounded (DDIM and PNDM round it, Euler keeps the
// fractions), "leading" arange(n) * (N // n) + steps_offset, "trailing" round(arange(N, 0, -N / n)) - 1.
std::vector<double> spaced_timesteps(const std::string& spacing, int64_t num_train_timesteps,
                                     int64_t num_inference_steps, int64_t steps_offset, const std::string& who);

// k-diffusion's sigma -> fractional training timestep: linear interpolation of log sigma between the
// two training steps around it (log_sigmas ascending, float32 as numpy holds them). numpy computes it
// in the sigma's dtype, so there is one overload for a float64 sigma and one for a float32 one.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);
double sigma_to_t(float sigma, const std::vector<float>& log_sigmas);

// Karras et al. (2022) sigmas, rho = 7, from sigma_max down to sigma_min; float64 as numpy.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t num_inference_steps);
// Log-linear sigmas from sigma_max down to sigma_min; float64.
std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int64_t num_inference_steps);

// diffusers' _threshold_sample (Imagen's dynamic thresholding): per sample, clamp to the `ratio`
// quantile of |x| (at least 1, at most max_value) and divide by it.
at::Tensor threshold_sample(const at::Tensor& sample, double ratio, double max_value);

// The position of `timestep` in `schedule` (as diffusers' index_for_timestep: the second of two equal
// entries, so that a schedule entered midway does not skip a sigma); nullopt when it is absent.
std::optional<int64_t> find_timestep(const at::Tensor& schedule, double timestep);

// `timestep` as the training step it names (an index into alphas_cumprod, `count` long); throws
// unless it is a whole number in [0, count).
int64_t training_step(double timestep, int64_t count, const std::string& who);

// Checks a config value against the ones a scheduler knows; the error names the key and the choices.
void check_choice(const std::string& who, const std::string& key, const std::string& value,
                  const std::vector<std::string>& choices);

}  // namespace diffuse
