// numpy rounds after every operation (one ufunc each); a compiler that fuses a * b + c into an FMA
// (GCC does by default for C++, clang within expressions, whenever the target has FMA, e.g. aarch64)
// would round once and move timesteps by an ulp. Contraction is off for this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "diffuse/schedulers/flow_match_euler_discrete.hpp"

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "diffuse/error.hpp"

namespace diffuse {
namespace {

// diffusers does this arithmetic in numpy, in float32 when the caller passed sigmas (they are cast
// with astype(np.float32), and Python floats stay weak under NEP 50) and in float64 otherwise. `T`
// follows it, so every rounding happens where numpy's does.
template <typename T>
void apply_shift(std::vector<T>& sigmas, const FlowMatchEulerDiscreteSchedulerConfig& config, double shift,
                 std::optional<double> mu) {
  const T one = T(1);
  if (config.use_dynamic_shifting) {
    // time_shift(mu, 1.0, t) = f(mu) / (f(mu) + (1/t - 1) ** 1.0); x ** 1.0 is x exactly.
    const T m = config.time_shift_type == "exponential" ? T(std::exp(*mu)) : T(*mu);
    for (T& s : sigmas) s = m / (m + (one / s - one));
  } else {
    const T k = T(shift), k_minus_one = T(shift - 1.0);
    for (T& s : sigmas) s = (k * s) / (one + k_minus_one * s);
  }
}

// diffusers' stretch_shift_to_terminal: rescales 1 - sigma so the last sigma becomes shift_terminal.
template <typename T>
void stretch_to_terminal(std::vector<T>& sigmas, double shift_terminal) {
  const T one = T(1);
  const T scale = (one - sigmas.back()) / T(1.0 - shift_terminal);
  // A schedule that ends at sigma 1 (a single step from pure noise) has nothing to stretch: diffusers
  // divides by zero there and denoises with NaN timesteps.
  if (!(scale != T(0)))
    throw Error("FlowMatchEulerDiscreteScheduler: shift_terminal " + std::to_string(shift_terminal) +
                " stretches the schedule to end there, but its last sigma is 1 (one step from pure noise); "
                "use at least 2 steps");
  for (T& s : sigmas) s = one - (one - s) / scale;
}

// Karras et al. (2022), rho = 7, between the schedule's first and last sigma; float64 as in diffusers.
std::vector<double> karras_sigmas(double sigma_max, double sigma_min, int64_t n) {
  const double rho = 7.0;
  const double min_inv_rho = std::pow(sigma_min, 1.0 / rho), max_inv_rho = std::pow(sigma_max, 1.0 / rho);
  std::vector<double> out;
  for (double r : numpy_linspace(0.0, 1.0, n))
    out.push_back(std::pow(max_inv_rho + r * (min_inv_rho - max_inv_rho), rho));
  return out;
}

// Log-linear from the first to the last sigma.
std::vector<double> exponential_sigmas(double sigma_max, double sigma_min, int64_t n) {
  std::vector<double> out;
  for (double x : numpy_linspace(std::log(sigma_max), std::log(sigma_min), n)) out.push_back(std::exp(x));
  return out;
}

// Steps 2-4 of diffusers' set_timesteps, then the float32 tensor of step 5.
template <typename T>
at::Tensor schedule(std::vector<T> sigmas, const FlowMatchEulerDiscreteSchedulerConfig& config, double shift,
                    std::optional<double> mu) {
  apply_shift(sigmas, config, shift, mu);
  if (config.shift_terminal && *config.shift_terminal != 0.0) stretch_to_terminal(sigmas, *config.shift_terminal);
  std::vector<float> out(sigmas.begin(), sigmas.end());
  if (config.use_karras_sigmas || config.use_exponential_sigmas) {
    const double first = static_cast<double>(sigmas.front()), last = static_cast<double>(sigmas.back());
    const int64_t n = static_cast<int64_t>(sigmas.size());
    auto converted = config.use_karras_sigmas ? karras_sigmas(first, last, n) : exponential_sigmas(first, last, n);
    out.assign(converted.begin(), converted.end());
  }
  return at::tensor(out, at::kFloat);
}

}  // namespace

double calculate_shift(int64_t image_seq_len, int64_t base_seq_len, int64_t max_seq_len, double base_shift,
                       double max_shift) {
  if (max_seq_len == base_seq_len)
    throw Error("calculate_shift: max_image_seq_len equals base_image_seq_len (" + std::to_string(base_seq_len) + ")");
  const double m = (max_shift - base_shift) / static_cast<double>(max_seq_len - base_seq_len);
  const double b = base_shift - m * static_cast<double>(base_seq_len);
  return static_cast<double>(image_seq_len) * m + b;
}

FlowMatchEulerDiscreteSchedulerConfig FlowMatchEulerDiscreteSchedulerConfig::from_json(const JsonConfig& json) {
  FlowMatchEulerDiscreteSchedulerConfig c;
  c.num_train_timesteps = json.get_int("num_train_timesteps", c.num_train_timesteps);
  c.shift = json.get_double("shift", c.shift);
  c.use_dynamic_shifting = json.get_bool("use_dynamic_shifting", c.use_dynamic_shifting);
  c.base_shift = json.get_double("base_shift", c.base_shift);
  c.max_shift = json.get_double("max_shift", c.max_shift);
  c.base_image_seq_len = json.get_int("base_image_seq_len", c.base_image_seq_len);
  c.max_image_seq_len = json.get_int("max_image_seq_len", c.max_image_seq_len);
  c.invert_sigmas = json.get_bool("invert_sigmas", c.invert_sigmas);
  c.shift_terminal = json.get_optional_double("shift_terminal");
  c.use_karras_sigmas = json.get_bool("use_karras_sigmas", c.use_karras_sigmas);
  c.use_exponential_sigmas = json.get_bool("use_exponential_sigmas", c.use_exponential_sigmas);
  c.use_beta_sigmas = json.get_bool("use_beta_sigmas", c.use_beta_sigmas);
  c.time_shift_type = json.get_string("time_shift_type", c.time_shift_type);
  c.stochastic_sampling = json.get_bool("stochastic_sampling", c.stochastic_sampling);
  if (c.time_shift_type != "exponential" && c.time_shift_type != "linear")
    throw Error(json.source() + ": key 'time_shift_type' should be 'exponential' or 'linear', got '" +
                c.time_shift_type + "'");
  return c;
}

FlowMatchEulerDiscreteSchedulerConfig FlowMatchEulerDiscreteSchedulerConfig::from_file(
    const std::filesystem::path& file) {
  return from_json(JsonConfig::load(file));
}

nlohmann::json FlowMatchEulerDiscreteSchedulerConfig::to_json() const {
  return {{"num_train_timesteps", num_train_timesteps},
          {"shift", shift},
          {"use_dynamic_shifting", use_dynamic_shifting},
          {"base_shift", base_shift},
          {"max_shift", max_shift},
          {"base_image_seq_len", base_image_seq_len},
          {"max_image_seq_len", max_image_seq_len},
          {"invert_sigmas", invert_sigmas},
          {"shift_terminal", shift_terminal ? nlohmann::json(*shift_terminal) : nlohmann::json(nullptr)},
          {"use_karras_sigmas", use_karras_sigmas},
          {"use_exponential_sigmas", use_exponential_sigmas},
          {"use_beta_sigmas", use_beta_sigmas},
          {"time_shift_type", time_shift_type},
          {"stochastic_sampling", stochastic_sampling}};
}

FlowMatchEulerDiscreteScheduler::FlowMatchEulerDiscreteScheduler(FlowMatchEulerDiscreteSchedulerConfig config)
    : Scheduler("FlowMatchEulerDiscreteScheduler", config.to_json(), FlowMatchEulerDiscreteSchedulerConfig{}.to_json()),
      config_(std::move(config)),
      shift_(config_.shift) {
  if (config_.time_shift_type != "exponential" && config_.time_shift_type != "linear")
    throw Error("FlowMatchEulerDiscreteScheduler: time_shift_type must be 'exponential' or 'linear', got '" +
                config_.time_shift_type + "'");
  if (int(config_.use_karras_sigmas) + int(config_.use_exponential_sigmas) + int(config_.use_beta_sigmas) > 1)
    throw Error(
        "FlowMatchEulerDiscreteScheduler: only one of use_karras_sigmas, use_exponential_sigmas and "
        "use_beta_sigmas can be set");
  if (config_.use_beta_sigmas)
    throw Error(
        "FlowMatchEulerDiscreteScheduler: use_beta_sigmas is not supported (it needs scipy's "
        "beta.ppf); use the default, karras or exponential sigmas");
  if (config_.num_train_timesteps < 1)
    throw Error("FlowMatchEulerDiscreteScheduler: num_train_timesteps must be positive, got " +
                std::to_string(config_.num_train_timesteps));

  // The training schedule: timesteps N..1 (float32), sigmas = t / N, shifted unless shifting is dynamic.
  const int64_t n = config_.num_train_timesteps;
  std::vector<float> sigmas(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) sigmas[static_cast<size_t>(i)] = static_cast<float>(n - i) / static_cast<float>(n);
  if (!config_.use_dynamic_shifting) apply_shift(sigmas, config_, shift_, std::nullopt);
  sigma_max_ = sigmas.front();
  sigma_min_ = sigmas.back();
  sigmas_ = at::tensor(sigmas, at::kFloat);
  timesteps_ = sigmas_ * n;
}

FlowMatchEulerDiscreteScheduler FlowMatchEulerDiscreteScheduler::from_pretrained(const std::filesystem::path& folder) {
  const std::filesystem::path file = folder / "scheduler_config.json";
  return from_config(JsonConfig::load(file).json(), file.string());
}

FlowMatchEulerDiscreteScheduler FlowMatchEulerDiscreteScheduler::from_config(const nlohmann::json& config,
                                                                             const std::string& source) {
  return made_from<FlowMatchEulerDiscreteScheduler>(config, source);
}

void FlowMatchEulerDiscreteScheduler::set_timesteps(int64_t num_inference_steps, std::optional<double> mu,
                                                    std::optional<std::vector<double>> sigmas) {
  const std::string where = "FlowMatchEulerDiscreteScheduler::set_timesteps: ";
  if (num_inference_steps < 1)
    throw Error(where + "num_inference_steps must be positive, got " + std::to_string(num_inference_steps));
  if (config_.use_dynamic_shifting && !mu)
    throw Error(where + "mu is required when use_dynamic_shifting is set (see calculate_shift)");
  if (sigmas && static_cast<int64_t>(sigmas->size()) != num_inference_steps)
    throw Error(where + "got " + std::to_string(sigmas->size()) + " sigmas for " + std::to_string(num_inference_steps) +
                " steps");

  at::Tensor shifted;
  if (sigmas) {
    shifted = schedule(std::vector<float>(sigmas->begin(), sigmas->end()), config_, shift_, mu);
  } else {
    const double n = static_cast<double>(config_.num_train_timesteps);
    std::vector<double> values = numpy_linspace(sigma_max_ * n, sigma_min_ * n, num_inference_steps);
    for (double& v : values) v /= n;
    shifted = schedule(std::move(values), config_, shift_, mu);
  }

  const int64_t n = config_.num_train_timesteps;
  if (config_.invert_sigmas) {
    at::Tensor inverted = 1.0 - shifted;
    timesteps_ = inverted * n;
    sigmas_ = at::cat({inverted, at::ones({1}, at::kFloat)});
  } else {
    timesteps_ = shifted * n;
    sigmas_ = at::cat({shifted, at::zeros({1}, at::kFloat)});
  }
  num_inference_steps_ = num_inference_steps;
  step_index_.reset();
  begin_index_.reset();
}

void FlowMatchEulerDiscreteScheduler::set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) {
  set_timesteps(num_inference_steps, options.mu, options.sigmas);
}

at::Tensor FlowMatchEulerDiscreteScheduler::step_impl(const at::Tensor& model_output, double timestep,
                                                      const at::Tensor& sample,
                                                      std::optional<at::Generator> generator) {
  if (!step_index_) step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(timestep);
  at::Tensor prev = step(model_output, *step_index_, sample, std::move(generator));
  step_index_ = *step_index_ + 1;
  return prev;
}

int64_t FlowMatchEulerDiscreteScheduler::index_for_timestep(double timestep) const {
  at::Tensor matches = (timesteps_ == static_cast<float>(timestep)).nonzero();
  if (matches.size(0) == 0)
    throw Error("FlowMatchEulerDiscreteScheduler: timestep " + std::to_string(timestep) + " is not in the schedule");
  // With repeated timesteps diffusers starts from the second, so that a schedule entered midway
  // (image-to-image) does not skip a sigma.
  return matches[matches.size(0) > 1 ? 1 : 0][0].item<int64_t>();
}

at::Tensor FlowMatchEulerDiscreteScheduler::step(const at::Tensor& model_output, int64_t step_index,
                                                 const at::Tensor& sample,
                                                 std::optional<at::Generator> generator) const {
  const int64_t steps = sigmas_.size(0) - 1;
  if (step_index < 0 || step_index >= steps)
    throw Error("FlowMatchEulerDiscreteScheduler::step: step index " + std::to_string(step_index) +
                " is outside the schedule of " + std::to_string(steps) + " steps");
  if (model_output.sizes() != sample.sizes())
    throw Error("FlowMatchEulerDiscreteScheduler::step: model_output " + c10::str(model_output.sizes()) +
                " and sample " + c10::str(sample.sizes()) + " differ in shape");
  // 0-dim float32 CPU tensors, as diffusers indexes them; they take part in the arithmetic as scalars.
  const at::Tensor sigma = sigmas_[step_index], sigma_next = sigmas_[step_index + 1];
  const at::Tensor sample32 = sample.to(at::kFloat);  // diffusers upcasts "to avoid precision issues"
  at::Tensor prev;
  if (config_.stochastic_sampling) {
    at::Tensor x0 = sample32 - sigma * model_output;
    at::Tensor noise;
    if (generator) {
      // randn_tensor: drawn on the generator's device, then moved.
      noise = at::randn(sample.sizes(), *generator, at::TensorOptions(at::kFloat).device(generator->device()))
                  .to(sample.device());
    } else {
      noise = at::randn(sample.sizes(), at::TensorOptions(at::kFloat).device(sample.device()));
    }
    prev = (1.0 - sigma_next) * x0 + sigma_next * noise;
  } else {
    prev = sample32 + (sigma_next - sigma) * model_output;
  }
  return prev.to(model_output.scalar_type());
}

}  // namespace diffuse
