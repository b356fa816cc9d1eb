// numpy and Python round after every operation; a compiler that fuses a * b + c into an FMA would round
// once and move a timestep by an ulp. Contraction is off for this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "diffuse/schedulers/ddpm_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/schedulers/numpy_ops.hpp"

namespace diffuse {

namespace {

// Bounds a damaged file could break: a schedule this long would take gigabytes.
constexpr int64_t kMaxTrainTimesteps = int64_t{1} << 24;

}  // namespace

void BetaScheduleConfig::read(const JsonConfig& json) {
  num_train_timesteps = json.get_int("num_train_timesteps", num_train_timesteps);
  beta_start = json.get_double("beta_start", beta_start);
  beta_end = json.get_double("beta_end", beta_end);
  beta_schedule = json.get_string("beta_schedule", beta_schedule);
  trained_betas = json.get_optional_double_list("trained_betas");
  if (num_train_timesteps < 1 || num_train_timesteps > kMaxTrainTimesteps)
    throw Error(json.source() + ": key 'num_train_timesteps' is " + std::to_string(num_train_timesteps) +
                ", outside [1, " + std::to_string(kMaxTrainTimesteps) + "]");
  if (trained_betas && (trained_betas->empty() || static_cast<int64_t>(trained_betas->size()) > kMaxTrainTimesteps))
    throw Error(json.source() + ": key 'trained_betas' has " + std::to_string(trained_betas->size()) +
                " entries; expected 1 to " + std::to_string(kMaxTrainTimesteps));
}

void BetaScheduleConfig::write(nlohmann::json& json) const {
  json["num_train_timesteps"] = num_train_timesteps;
  json["beta_start"] = beta_start;
  json["beta_end"] = beta_end;
  json["beta_schedule"] = beta_schedule;
  json["trained_betas"] = trained_betas ? nlohmann::json(*trained_betas) : nlohmann::json(nullptr);
}

at::Tensor torch_linspace(double start, double end, int64_t steps) {
  if (steps < 0) throw Error("linspace: the number of steps must be non-negative, got " + std::to_string(steps));
  std::vector<float> out(static_cast<size_t>(steps));
  if (steps == 1) out[0] = static_cast<float>(start);
  if (steps > 1) {
    const float first = static_cast<float>(start), last = static_cast<float>(end);
    const float step = (last - first) / static_cast<float>(steps - 1);
    const int64_t halfway = steps / 2;
    for (int64_t i = 0; i < steps; ++i)
      out[static_cast<size_t>(i)] = i < halfway ? first + step * static_cast<float>(i)
                                                : last - step * static_cast<float>(steps - i - 1);
  }
  return at::tensor(out, at::kFloat);
}

at::Tensor make_betas(const BetaScheduleConfig& config, const std::string& who) {
  if (config.trained_betas) {
    // torch.tensor(trained_betas, dtype=torch.float32): each Python float rounded to float32.
    std::vector<float> betas(config.trained_betas->begin(), config.trained_betas->end());
    return at::tensor(betas, at::kFloat);
  }
  const int64_t n = config.num_train_timesteps;
  if (config.beta_schedule == "linear") return torch_linspace(config.beta_start, config.beta_end, n);
  if (config.beta_schedule == "scaled_linear") {
    // Latent diffusion's schedule: linear in sqrt(beta). Python's x ** 0.5 is C's pow.
    return at::pow(torch_linspace(std::pow(config.beta_start, 0.5), std::pow(config.beta_end, 0.5), n), 2);
  }
  if (config.beta_schedule == "squaredcos_cap_v2") return betas_for_alpha_bar(n);
  throw Error(who + ": beta_schedule '" + config.beta_schedule +
              "' is not implemented; expected linear, scaled_linear or squaredcos_cap_v2");
}

at::Tensor betas_for_alpha_bar(int64_t num_diffusion_timesteps, double max_beta) {
  // Python floats throughout, left to right as diffusers writes them; then one cast to float32.
  const double pi = 3.141592653589793;  // math.pi
  auto alpha_bar = [pi](double t) {
    const double c = std::cos((t + 0.008) / 1.008 * pi / 2);
    return std::pow(c, 2.0);
  };
  std::vector<float> betas;
  betas.reserve(static_cast<size_t>(num_diffusion_timesteps));
  const double n = static_cast<double>(num_diffusion_timesteps);
  for (int64_t i = 0; i < num_diffusion_timesteps; ++i) {
    const double t1 = static_cast<double>(i) / n;
    const double t2 = static_cast<double>(i + 1) / n;
    betas.push_back(static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta)));
  }
  return at::tensor(betas, at::kFloat);
}

at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas) {
  const at::Tensor alphas = at::rsub(betas, 1.0);
  at::Tensor alphas_bar_sqrt = at::cumprod(alphas, 0).sqrt();
  const at::Tensor first = alphas_bar_sqrt[0].clone();
  const at::Tensor last = alphas_bar_sqrt[-1].clone();
  // Shift so the last timestep is zero, then scale so the first is back to its old value.
  alphas_bar_sqrt -= last;
  alphas_bar_sqrt *= first / (first - last);
  const at::Tensor alphas_bar = at::pow(alphas_bar_sqrt, 2);
  const int64_t n = alphas_bar.size(0);
  const at::Tensor ratios = alphas_bar.slice(0, 1, n) / alphas_bar.slice(0, 0, n - 1);  // undo the cumprod
  return at::rsub(at::cat({alphas_bar.slice(0, 0, 1), ratios}), 1);
}

at::Tensor alphas_cumprod_of(const at::Tensor& betas) { return at::cumprod(at::rsub(betas, 1.0), 0); }

at::Tensor sigmas_of(const at::Tensor& alphas_cumprod) {
  return at::pow(at::rsub(alphas_cumprod, 1) / alphas_cumprod, 0.5);
}

std::vector<double> spaced_timesteps(const std::string& spacing, int64_t num_train_timesteps,
                                     int64_t num_inference_steps, int64_t steps_offset, const std::string& who) {
  const int64_t n = num_inference_steps;
  std::vector<double> out;
  if (spacing == "linspace") {
    out = numpy_linspace(0, static_cast<double>(num_train_timesteps - 1), n);
    std::reverse(out.begin(), out.end());
  } else if (spacing == "leading") {
    const int64_t step_ratio = num_train_timesteps / n;
    for (int64_t i = n - 1; i >= 0; --i) out.push_back(static_cast<double>(i * step_ratio + steps_offset));
  } else if (spacing == "trailing") {
    const double step_ratio = static_cast<double>(num_train_timesteps) / static_cast<double>(n);
    out = numpy_arange(static_cast<double>(num_train_timesteps), 0, -step_ratio);
    for (double& t : out) t = numpy_round(t) - 1;
  } else {
    throw Error(who + ": timestep_spacing '" + spacing + "' is not supported; expected linspace, leading or trailing");
  }
  return out;
}

namespace {

// The body of k-diffusion's sigma_to_t in the dtype numpy computes it in: float64 for a float64 sigma,
// float32 for a float32 one (a Python float stays weak; the float32 log sigmas promote only against
// float64). The result is float64 either way (the interpolation multiplies by int64 indices).
template <typename T>
double sigma_to_t_as(T sigma, const std::vector<float>& log_sigmas) {
  const int64_t n = static_cast<int64_t>(log_sigmas.size());
  if (n < 2) throw Error("sigma_to_t: the training schedule needs at least 2 steps");
  const T log_sigma = std::log(std::max(sigma, static_cast<T>(1e-10)));
  // cumsum(dists >= 0).argmax(): the first index where the count of log sigmas at or below ours peaks.
  int64_t count = 0, best = -1, low = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (log_sigma - static_cast<T>(log_sigmas[static_cast<size_t>(i)]) >= 0) ++count;
    if (count > best) {
      best = count;
      low = i;
    }
  }
  low = std::min(low, n - 2);
  const int64_t high = low + 1;
  const float low_value = log_sigmas[static_cast<size_t>(low)], high_value = log_sigmas[static_cast<size_t>(high)];
  const float span = low_value - high_value;  // float32 - float32 stays float32
  T w = (static_cast<T>(low_value) - log_sigma) / static_cast<T>(span);
  if (w < 0) w = 0;
  if (w > 1) w = 1;
  const T one_minus_w = 1 - w;
  return static_cast<double>(one_minus_w) * static_cast<double>(low) +
         static_cast<double>(w) * static_cast<double>(high);
}

}  // namespace

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) { return sigma_to_t_as(sigma, log_sigmas); }
double sigma_to_t(float sigma, const std::vector<float>& log_sigmas) { return sigma_to_t_as(sigma, log_sigmas); }

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t num_inference_steps) {
  const double rho = 7.0;
  const double min_inv_rho = std::pow(sigma_min, 1 / rho), max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> out;
  for (double ramp : numpy_linspace(0, 1, num_inference_steps))
    out.push_back(std::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho));
  return out;
}

std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int64_t num_inference_steps) {
  std::vector<double> out;
  for (double x : numpy_linspace(std::log(sigma_max), std::log(sigma_min), num_inference_steps))
    out.push_back(std::exp(x));
  return out;
}

at::Tensor threshold_sample(const at::Tensor& sample, double ratio, double max_value) {
  const c10::ScalarType dtype = sample.scalar_type();
  at::Tensor x = sample;
  // quantile needs float32 or float64 (and clamp is not implemented for CPU half).
  if (dtype != at::kFloat && dtype != at::kDouble) x = x.to(at::kFloat);
  const auto shape = x.sizes().vec();
  x = x.reshape({shape[0], -1});
  at::Tensor s = at::quantile(x.abs(), ratio, 1);
  // At least 1: where the quantile is below 1 this is plain clipping to [-1, 1].
  s = at::clamp(s, at::Scalar(1), at::Scalar(max_value)).unsqueeze(1);
  x = at::clamp(x, -s, s) / s;
  return x.reshape(shape).to(dtype);
}

std::optional<int64_t> find_timestep(const at::Tensor& schedule, double timestep) {
  const at::Tensor values = schedule.to(at::kCPU, at::kDouble).contiguous();
  // Compared in the schedule's dtype, as torch compares a tensor with a Python number.
  const bool is_float = schedule.scalar_type() == at::kFloat;
  const double wanted = is_float ? static_cast<double>(static_cast<float>(timestep)) : timestep;
  const double* data = values.data_ptr<double>();
  std::vector<int64_t> hits;
  for (int64_t i = 0; i < values.numel() && hits.size() < 2; ++i)
    if (data[i] == wanted) hits.push_back(i);
  if (hits.empty()) return std::nullopt;
  return hits.size() > 1 ? hits[1] : hits[0];
}

int64_t training_step(double timestep, int64_t count, const std::string& who) {
  if (!(timestep >= 0 && timestep < static_cast<double>(count)) || timestep != std::floor(timestep))
    throw Error(who + ": timestep " + std::to_string(timestep) + " is not a training step (a whole number in [0, " +
                std::to_string(count) + ")); pass the entries of timesteps()");
  return static_cast<int64_t>(timestep);
}

void check_choice(const std::string& who, const std::string& key, const std::string& value,
                  const std::vector<std::string>& choices) {
  if (std::find(choices.begin(), choices.end(), value) != choices.end()) return;
  std::string list;
  for (const auto& choice : choices) list += (list.empty() ? "" : ", ") + choice;
  throw Error(who + ": key '" + key + "' is '" + value + "'; expected one of: " + list);
}

}  // namespace diffuse
