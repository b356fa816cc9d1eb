// Python rounds after every operation; contraction of a * b + c into an FMA is off for this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "diffuse/schedulers/dpmsolver_multistep.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/pipelines/flux_latents.hpp"  // randn_tensor
#include "diffuse/schedulers/numpy_ops.hpp"

namespace diffuse {

namespace {

const char* const kWho = "DPMSolverMultistepScheduler";

std::vector<float> to_floats(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

bool is_sde(const std::string& algorithm) { return algorithm == "sde-dpmsolver++" || algorithm == "sde-dpmsolver"; }
bool is_plus_plus(const std::string& algorithm) {
  return algorithm == "dpmsolver++" || algorithm == "sde-dpmsolver++";
}

}  // namespace

DPMSolverMultistepSchedulerConfig DPMSolverMultistepSchedulerConfig::from_json(const JsonConfig& json) {
  DPMSolverMultistepSchedulerConfig c;
  c.read(json);
  c.solver_order = json.get_int("solver_order", c.solver_order);
  c.prediction_type = json.get_string("prediction_type", c.prediction_type);
  c.thresholding = json.get_bool("thresholding", c.thresholding);
  c.dynamic_thresholding_ratio = json.get_double("dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
  c.sample_max_value = json.get_double("sample_max_value", c.sample_max_value);
  c.algorithm_type = json.get_string("algorithm_type", c.algorithm_type);
  c.solver_type = json.get_string("solver_type", c.solver_type);
  c.lower_order_final = json.get_bool("lower_order_final", c.lower_order_final);
  c.euler_at_final = json.get_bool("euler_at_final", c.euler_at_final);
  c.use_karras_sigmas = json.get_bool("use_karras_sigmas", c.use_karras_sigmas);
  c.use_exponential_sigmas = json.get_bool("use_exponential_sigmas", c.use_exponential_sigmas);
  c.use_beta_sigmas = json.get_bool("use_beta_sigmas", c.use_beta_sigmas);
  c.use_lu_lambdas = json.get_bool("use_lu_lambdas", c.use_lu_lambdas);
  c.use_flow_sigmas = json.get_bool("use_flow_sigmas", c.use_flow_sigmas);
  c.flow_shift = json.get_double("flow_shift", c.flow_shift);
  c.final_sigmas_type = json.get_string("final_sigmas_type", c.final_sigmas_type);
  c.lambda_min_clipped = json.get_double("lambda_min_clipped", c.lambda_min_clipped);
  if (json.has("variance_type")) c.variance_type = json.get_string("variance_type", "");
  c.timestep_spacing = json.get_string("timestep_spacing", c.timestep_spacing);
  c.steps_offset = json.get_int("steps_offset", c.steps_offset);
  c.rescale_betas_zero_snr = json.get_bool("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  c.use_dynamic_shifting = json.get_bool("use_dynamic_shifting", c.use_dynamic_shifting);
  c.time_shift_type = json.get_string("time_shift_type", c.time_shift_type);
  // diffusers registers these replacements in the config it keeps.
  if (c.algorithm_type == "deis") c.algorithm_type = "dpmsolver++";
  if (c.solver_type == "logrho" || c.solver_type == "bh1" || c.solver_type == "bh2") c.solver_type = "midpoint";
  return c;
}

nlohmann::json DPMSolverMultistepSchedulerConfig::to_json() const {
  nlohmann::json json = nlohmann::json::object();
  write(json);
  json["solver_order"] = solver_order;
  json["prediction_type"] = prediction_type;
  json["thresholding"] = thresholding;
  json["dynamic_thresholding_ratio"] = dynamic_thresholding_ratio;
  json["sample_max_value"] = sample_max_value;
  json["algorithm_type"] = algorithm_type;
  json["solver_type"] = solver_type;
  json["lower_order_final"] = lower_order_final;
  json["euler_at_final"] = euler_at_final;
  json["use_karras_sigmas"] = use_karras_sigmas;
  json["use_exponential_sigmas"] = use_exponential_sigmas;
  json["use_beta_sigmas"] = use_beta_sigmas;
  json["use_lu_lambdas"] = use_lu_lambdas;
  json["use_flow_sigmas"] = use_flow_sigmas;
  json["flow_shift"] = flow_shift;
  json["final_sigmas_type"] = final_sigmas_type;
  json["lambda_min_clipped"] = lambda_min_clipped;
  json["variance_type"] = variance_type ? nlohmann::json(*variance_type) : nlohmann::json(nullptr);
  json["timestep_spacing"] = timestep_spacing;
  json["steps_offset"] = steps_offset;
  json["rescale_betas_zero_snr"] = rescale_betas_zero_snr;
  json["use_dynamic_shifting"] = use_dynamic_shifting;
  json["time_shift_type"] = time_shift_type;
  return json;
}

DPMSolverMultistepScheduler::DPMSolverMultistepScheduler(DPMSolverMultistepSchedulerConfig config)
    : Scheduler(kWho, config.to_json(), DPMSolverMultistepSchedulerConfig{}.to_json()),
      config_(std::move(config)),
      flow_shift_(config_.flow_shift) {
  const auto& c = config_;
  const std::string who = kWho;
  if (c.algorithm_type == "deis") config_.algorithm_type = "dpmsolver++";
  if (c.solver_type == "logrho" || c.solver_type == "bh1" || c.solver_type == "bh2") config_.solver_type = "midpoint";
  check_choice(who, "algorithm_type", c.algorithm_type,
               {"dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"});
  check_choice(who, "solver_type", c.solver_type, {"midpoint", "heun"});
  check_choice(who, "prediction_type", c.prediction_type, {"epsilon", "sample", "v_prediction", "flow_prediction"});
  check_choice(who, "final_sigmas_type", c.final_sigmas_type, {"zero", "sigma_min"});
  check_choice(who, "timestep_spacing", c.timestep_spacing, {"linspace", "leading", "trailing"});
  check_choice(who, "time_shift_type", c.time_shift_type, {"exponential"});
  if (c.variance_type) check_choice(who, "variance_type", *c.variance_type, {"learned", "learned_range"});
  if (c.solver_order < 1 || c.solver_order > 3)
    throw Error(who + ": key 'solver_order' is " + std::to_string(c.solver_order) + "; expected 1, 2 or 3");
  if (c.solver_order == 3 && c.algorithm_type == "sde-dpmsolver")
    throw Error(who + ": solver_order 3 is not implemented for algorithm_type 'sde-dpmsolver' (diffusers neither)");
  if (!is_plus_plus(c.algorithm_type) && c.final_sigmas_type == "zero")
    throw Error(who + ": final_sigmas_type 'zero' is not supported for algorithm_type '" + c.algorithm_type +
                "'; use 'sigma_min'");
  if (!is_plus_plus(c.algorithm_type) && c.prediction_type == "flow_prediction")
    throw Error(who + ": prediction_type 'flow_prediction' needs algorithm_type dpmsolver++ or sde-dpmsolver++");
  if (int(c.use_beta_sigmas) + int(c.use_exponential_sigmas) + int(c.use_karras_sigmas) > 1)
    throw Error(who + ": only one of use_beta_sigmas, use_exponential_sigmas and use_karras_sigmas can be set");
  if (c.use_beta_sigmas)
    throw Error(who +
                ": use_beta_sigmas is not supported (it needs scipy's beta.ppf); use karras or exponential sigmas");

  at::Tensor betas = make_betas(c, kWho);
  if (c.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  alphas_cumprod_ = alphas_cumprod_of(betas);
  // Close to 0 without being 0, so that the first sigma is not infinite (fp16's smallest subnormal).
  if (c.rescale_betas_zero_snr) alphas_cumprod_[-1].fill_(std::ldexp(1.0, -24));
  // Only VP-type noise schedules: alpha_t = sqrt(alpha_bar), sigma_t = sqrt(1 - alpha_bar).
  const at::Tensor alpha_t = at::sqrt(alphas_cumprod_), sigma_t = at::sqrt(at::rsub(alphas_cumprod_, 1));
  lambda_t_ = at::log(alpha_t) - at::log(sigma_t);
  sigmas_ = sigmas_of(alphas_cumprod_);

  const int64_t n = c.num_train_timesteps;
  std::vector<float> t;
  for (double v : numpy_linspace(0, static_cast<double>(n - 1), n)) t.push_back(static_cast<float>(v));
  std::reverse(t.begin(), t.end());
  timesteps_ = at::tensor(t, at::kFloat);
  model_outputs_.assign(static_cast<size_t>(c.solver_order), at::Tensor());
}

DPMSolverMultistepScheduler DPMSolverMultistepScheduler::from_config(const nlohmann::json& config,
                                                                     const std::string& source) {
  return made_from<DPMSolverMultistepScheduler>(config, source);
}

DPMSolverMultistepScheduler DPMSolverMultistepScheduler::from_pretrained(const std::filesystem::path& folder) {
  const std::filesystem::path file = folder / "scheduler_config.json";
  return from_config(JsonConfig::load(file).json(), file.string());
}

std::optional<double> DPMSolverMultistepScheduler::carried_sigma(const char* key) const {
  const nlohmann::json& json = Scheduler::config();
  auto it = json.find(key);
  if (it == json.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

void DPMSolverMultistepScheduler::set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) {
  const std::string where = std::string(kWho) + "::set_timesteps";
  const auto& c = config_;
  const int64_t n = num_inference_steps;
  if (n < 1) throw Error(where + ": num_inference_steps must be positive, got " + std::to_string(n));
  if (options.sigmas) throw Error(where + ": this scheduler takes no sigmas (its noise levels are its betas')");
  if (options.mu) {
    if (!c.use_dynamic_shifting)
      throw Error(where + ": mu is given but the config does not set use_dynamic_shifting");
    flow_shift_ = std::exp(*options.mu);
  }

  // Clipping the smallest lambda(t) for numerical stability (critical for the cosine schedule).
  const int64_t clipped_idx = at::searchsorted(lambda_t_.flip(0), at::Scalar(c.lambda_min_clipped)).item<int64_t>();
  const int64_t last_timestep = c.num_train_timesteps - clipped_idx;

  std::vector<double> timesteps;  // float64 as numpy holds them; truncated to int64 at the end
  if (c.timestep_spacing == "linspace") {
    const std::vector<double> v = numpy_linspace(0, static_cast<double>(last_timestep - 1), n + 1);
    for (int64_t i = n; i >= 1; --i) timesteps.push_back(numpy_round(v[static_cast<size_t>(i)]));
  } else if (c.timestep_spacing == "leading") {
    const int64_t step_ratio = last_timestep / (n + 1);
    for (int64_t i = n; i >= 1; --i) timesteps.push_back(static_cast<double>(i * step_ratio + c.steps_offset));
  } else {  // trailing
    const double step_ratio = static_cast<double>(c.num_train_timesteps) / static_cast<double>(n);
    for (double v : numpy_arange(static_cast<double>(last_timestep), 0, -step_ratio))
      timesteps.push_back(numpy_round(v) - 1);
  }

  const std::vector<float> train_sigmas = to_floats(sigmas_of(alphas_cumprod_));  // ascending with t
  std::vector<float> log_sigmas;
  for (float s : train_sigmas) log_sigmas.push_back(std::log(s));
  const bool round_timesteps = c.beta_schedule != "squaredcos_cap_v2";
  std::vector<double> sigmas;
  if (c.use_karras_sigmas || c.use_exponential_sigmas) {
    const double lo = carried_sigma("sigma_min").value_or(train_sigmas.front());
    const double hi = carried_sigma("sigma_max").value_or(train_sigmas.back());
    sigmas = c.use_karras_sigmas ? karras_sigmas(lo, hi, n) : exponential_sigmas(lo, hi, n);
    timesteps.clear();
    for (double s : sigmas) {
      const double t = sigma_to_t(s, log_sigmas);
      timesteps.push_back(c.use_karras_sigmas && round_timesteps ? numpy_round(t) : t);
    }
  } else if (c.use_lu_lambdas) {
    // Uniform in log-SNR: from the largest log sigma to the smallest (rho = 1).
    const double lambda_min = log_sigmas.front(), lambda_max = log_sigmas.back();
    timesteps.clear();
    for (double ramp : numpy_linspace(0, 1, n)) {
      const double sigma = std::exp(lambda_max + ramp * (lambda_min - lambda_max));
      sigmas.push_back(sigma);
      const double t = sigma_to_t(sigma, log_sigmas);
      timesteps.push_back(round_timesteps ? numpy_round(t) : t);
    }
  } else if (c.use_flow_sigmas) {
    const std::vector<double> alphas = numpy_linspace(1, 1.0 / static_cast<double>(c.num_train_timesteps), n + 1);
    std::vector<double> shifted;
    for (double a : alphas) {
      const double s = 1.0 - a;
      shifted.push_back(flow_shift_ * s / (1 + (flow_shift_ - 1) * s));
    }
    timesteps.clear();
    for (int64_t i = n; i >= 1; --i) {  // flipped, the last (0) dropped
      const double s = shifted[static_cast<size_t>(i)];
      sigmas.push_back(s);
      timesteps.push_back(s * static_cast<double>(c.num_train_timesteps));
    }
  } else {
    std::vector<double> xp(train_sigmas.size()), fp(train_sigmas.begin(), train_sigmas.end());
    for (size_t i = 0; i < xp.size(); ++i) xp[i] = static_cast<double>(i);
    sigmas = numpy_interp(timesteps, xp, fp);
  }

  std::vector<float> all(sigmas.begin(), sigmas.end());
  all.push_back(c.final_sigmas_type == "sigma_min" ? train_sigmas.front() : 0.0f);
  sigmas_ = at::tensor(all, at::kFloat);
  std::vector<int64_t> t;
  for (double v : timesteps) t.push_back(static_cast<int64_t>(v));  // torch's .to(int64) truncates
  timesteps_ = at::tensor(t, at::kLong);
  num_inference_steps_ = static_cast<int64_t>(t.size());

  model_outputs_.assign(static_cast<size_t>(c.solver_order), at::Tensor());
  lower_order_nums_ = 0;
  step_index_.reset();
  begin_index_.reset();
}

std::pair<at::Tensor, at::Tensor> DPMSolverMultistepScheduler::alpha_sigma(const at::Tensor& sigma) const {
  if (config_.use_flow_sigmas) return {at::rsub(sigma, 1), sigma};
  // Python's 1 / tensor is tensor.reciprocal() * 1.
  const at::Tensor alpha_t = at::reciprocal(at::pow(at::pow(sigma, 2) + 1, 0.5));
  return {alpha_t, sigma * alpha_t};
}

at::Tensor DPMSolverMultistepScheduler::convert_model_output(const at::Tensor& model_output,
                                                             const at::Tensor& sample) const {
  const auto& c = config_;
  const at::Tensor sigma = sigmas_[*step_index_];
  const bool learned = c.variance_type.has_value();
  if (is_plus_plus(c.algorithm_type)) {
    // DPM-Solver++ integrates the data prediction.
    at::Tensor x0_pred;
    if (c.prediction_type == "epsilon") {
      const at::Tensor eps = learned ? model_output.slice(1, 0, 3) : model_output;
      const auto [alpha_t, sigma_t] = alpha_sigma(sigma);
      x0_pred = (sample - sigma_t * eps) / alpha_t;
    } else if (c.prediction_type == "sample") {
      x0_pred = model_output;
    } else if (c.prediction_type == "v_prediction") {
      const auto [alpha_t, sigma_t] = alpha_sigma(sigma);
      x0_pred = alpha_t * sample - sigma_t * model_output;
    } else {  // flow_prediction
      x0_pred = sample - sigma * model_output;
    }
    if (c.thresholding) x0_pred = threshold_sample(x0_pred, c.dynamic_thresholding_ratio, c.sample_max_value);
    return x0_pred;
  }
  // DPM-Solver integrates the noise prediction.
  at::Tensor epsilon;
  const auto [alpha_t, sigma_t] = alpha_sigma(sigma);
  if (c.prediction_type == "epsilon") {
    epsilon = learned ? model_output.slice(1, 0, 3) : model_output;
  } else if (c.prediction_type == "sample") {
    epsilon = (sample - alpha_t * model_output) / sigma_t;
  } else {  // v_prediction
    epsilon = alpha_t * model_output + sigma_t * sample;
  }
  if (c.thresholding) {
    at::Tensor x0_pred = (sample - sigma_t * epsilon) / alpha_t;
    x0_pred = threshold_sample(x0_pred, c.dynamic_thresholding_ratio, c.sample_max_value);
    epsilon = (sample - alpha_t * x0_pred) / sigma_t;
  }
  return epsilon;
}

at::Tensor DPMSolverMultistepScheduler::first_order_update(const at::Tensor& model_output, const at::Tensor& sample,
                                                           const at::Tensor& noise) const {
  const int64_t i = *step_index_;
  const auto [alpha_t, sigma_t] = alpha_sigma(sigmas_[i + 1]);
  const auto [alpha_s, sigma_s] = alpha_sigma(sigmas_[i]);
  const at::Tensor lambda_t = at::log(alpha_t) - at::log(sigma_t);
  const at::Tensor lambda_s = at::log(alpha_s) - at::log(sigma_s);
  const at::Tensor h = lambda_t - lambda_s;
  const std::string& algorithm = config_.algorithm_type;
  if (algorithm == "dpmsolver++")
    return (sigma_t / sigma_s) * sample - (alpha_t * (at::exp(-h) - 1.0)) * model_output;
  if (algorithm == "dpmsolver")
    return (alpha_t / alpha_s) * sample - (sigma_t * (at::exp(h) - 1.0)) * model_output;
  if (algorithm == "sde-dpmsolver++")
    return (sigma_t / sigma_s * at::exp(-h)) * sample + (alpha_t * at::rsub(at::exp(h * -2.0), 1)) * model_output +
           sigma_t * at::sqrt(at::rsub(at::exp(h * -2), 1.0)) * noise;
  // sde-dpmsolver
  return (alpha_t / alpha_s) * sample - (sigma_t * (at::exp(h) - 1.0)) * 2.0 * model_output +
         sigma_t * at::sqrt(at::exp(h * 2) - 1.0) * noise;
}

at::Tensor DPMSolverMultistepScheduler::second_order_update(const at::Tensor& sample, const at::Tensor& noise) const {
  const int64_t i = *step_index_;
  const auto [alpha_t, sigma_t] = alpha_sigma(sigmas_[i + 1]);
  const auto [alpha_s0, sigma_s0] = alpha_sigma(sigmas_[i]);
  const auto [alpha_s1, sigma_s1] = alpha_sigma(sigmas_[i - 1]);
  const at::Tensor lambda_t = at::log(alpha_t) - at::log(sigma_t);
  const at::Tensor lambda_s0 = at::log(alpha_s0) - at::log(sigma_s0);
  const at::Tensor lambda_s1 = at::log(alpha_s1) - at::log(sigma_s1);
  const size_t last = model_outputs_.size() - 1;
  const at::Tensor& m0 = model_outputs_[last];
  const at::Tensor& m1 = model_outputs_[last - 1];
  const at::Tensor h = lambda_t - lambda_s0, h_0 = lambda_s0 - lambda_s1;
  const at::Tensor r0 = h_0 / h;
  const at::Tensor& D0 = m0;
  const at::Tensor D1 = at::reciprocal(r0) * (m0 - m1);  // (1.0 / r0) * (m0 - m1)
  const std::string& algorithm = config_.algorithm_type;
  const bool midpoint = config_.solver_type == "midpoint";
  if (algorithm == "dpmsolver++") {
    // See https://huggingface.co/papers/2211.01095 for the derivations.
    if (midpoint)
      return (sigma_t / sigma_s0) * sample - (alpha_t * (at::exp(-h) - 1.0)) * D0 -
             (alpha_t * (at::exp(-h) - 1.0)) * 0.5 * D1;
    return (sigma_t / sigma_s0) * sample - (alpha_t * (at::exp(-h) - 1.0)) * D0 +
           (alpha_t * ((at::exp(-h) - 1.0) / h + 1.0)) * D1;
  }
  if (algorithm == "dpmsolver") {
    // See https://huggingface.co/papers/2206.00927 for the derivations.
    if (midpoint)
      return (alpha_t / alpha_s0) * sample - (sigma_t * (at::exp(h) - 1.0)) * D0 -
             (sigma_t * (at::exp(h) - 1.0)) * 0.5 * D1;
    return (alpha_t / alpha_s0) * sample - (sigma_t * (at::exp(h) - 1.0)) * D0 -
           (sigma_t * ((at::exp(h) - 1.0) / h - 1.0)) * D1;
  }
  if (algorithm == "sde-dpmsolver++") {
    const at::Tensor noise_term = sigma_t * at::sqrt(at::rsub(at::exp(h * -2), 1.0)) * noise;
    if (midpoint)
      return (sigma_t / sigma_s0 * at::exp(-h)) * sample + (alpha_t * at::rsub(at::exp(h * -2.0), 1)) * D0 +
             (alpha_t * at::rsub(at::exp(h * -2.0), 1)) * 0.5 * D1 + noise_term;
    return (sigma_t / sigma_s0 * at::exp(-h)) * sample + (alpha_t * at::rsub(at::exp(h * -2.0), 1)) * D0 +
           (alpha_t * (at::rsub(at::exp(h * -2.0), 1.0) / (h * -2.0) + 1.0)) * D1 + noise_term;
  }
  // sde-dpmsolver
  const at::Tensor noise_term = sigma_t * at::sqrt(at::exp(h * 2) - 1.0) * noise;
  if (midpoint)
    return (alpha_t / alpha_s0) * sample - (sigma_t * (at::exp(h) - 1.0)) * 2.0 * D0 -
           (sigma_t * (at::exp(h) - 1.0)) * D1 + noise_term;
  return (alpha_t / alpha_s0) * sample - (sigma_t * (at::exp(h) - 1.0)) * 2.0 * D0 -
         (sigma_t * ((at::exp(h) - 1.0) / h - 1.0)) * 2.0 * D1 + noise_term;
}

at::Tensor DPMSolverMultistepScheduler::third_order_update(const at::Tensor& sample, const at::Tensor& noise) const {
  const int64_t i = *step_index_;
  const auto [alpha_t, sigma_t] = alpha_sigma(sigmas_[i + 1]);
  const auto [alpha_s0, sigma_s0] = alpha_sigma(sigmas_[i]);
  const auto [alpha_s1, sigma_s1] = alpha_sigma(sigmas_[i - 1]);
  const auto [alpha_s2, sigma_s2] = alpha_sigma(sigmas_[i - 2]);
  const at::Tensor lambda_t = at::log(alpha_t) - at::log(sigma_t);
  const at::Tensor lambda_s0 = at::log(alpha_s0) - at::log(sigma_s0);
  const at::Tensor lambda_s1 = at::log(alpha_s1) - at::log(sigma_s1);
  const at::Tensor lambda_s2 = at::log(alpha_s2) - at::log(sigma_s2);
  const size_t last = model_outputs_.size() - 1;
  const at::Tensor& m0 = model_outputs_[last];
  const at::Tensor& m1 = model_outputs_[last - 1];
  const at::Tensor& m2 = model_outputs_[last - 2];
  const at::Tensor h = lambda_t - lambda_s0, h_0 = lambda_s0 - lambda_s1, h_1 = lambda_s1 - lambda_s2;
  const at::Tensor r0 = h_0 / h, r1 = h_1 / h;
  const at::Tensor& D0 = m0;
  const at::Tensor D1_0 = at::reciprocal(r0) * (m0 - m1), D1_1 = at::reciprocal(r1) * (m1 - m2);
  const at::Tensor D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1);
  const at::Tensor D2 = at::reciprocal(r0 + r1) * (D1_0 - D1_1);
  const std::string& algorithm = config_.algorithm_type;
  if (algorithm == "dpmsolver++")
    return (sigma_t / sigma_s0) * sample - (alpha_t * (at::exp(-h) - 1.0)) * D0 +
           (alpha_t * ((at::exp(-h) - 1.0) / h + 1.0)) * D1 -
           (alpha_t * ((at::exp(-h) - 1.0 + h) / at::pow(h, 2) - 0.5)) * D2;
  if (algorithm == "dpmsolver")
    return (alpha_t / alpha_s0) * sample - (sigma_t * (at::exp(h) - 1.0)) * D0 -
           (sigma_t * ((at::exp(h) - 1.0) / h - 1.0)) * D1 -
           (sigma_t * ((at::exp(h) - 1.0 - h) / at::pow(h, 2) - 0.5)) * D2;
  // sde-dpmsolver++ (sde-dpmsolver has no third-order update; the constructor refuses it)
  return (sigma_t / sigma_s0 * at::exp(-h)) * sample + (alpha_t * at::rsub(at::exp(h * -2.0), 1.0)) * D0 +
         (alpha_t * (at::rsub(at::exp(h * -2.0), 1.0) / (h * -2.0) + 1.0)) * D1 +
         (alpha_t * ((at::rsub(at::exp(h * -2.0), 1.0) - h * 2.0) / at::pow(h * 2.0, 2) - 0.5)) * D2 +
         sigma_t * at::sqrt(at::rsub(at::exp(h * -2), 1.0)) * noise;
}

at::Tensor DPMSolverMultistepScheduler::step_impl(const at::Tensor& model_output, double timestep,
                                                  const at::Tensor& sample, std::optional<at::Generator> generator) {
  const std::string where = std::string(kWho) + "::step";
  const auto& c = config_;
  if (num_inference_steps_ == 0) throw Error(where + ": call set_timesteps before stepping");
  if (model_output.sizes() != sample.sizes() && !c.variance_type)
    throw Error(where + ": model_output " + c10::str(model_output.sizes()) + " and sample " +
                c10::str(sample.sizes()) + " differ in shape");
  if (!step_index_) {
    // diffusers: the second of two equal timesteps; a timestep not in the schedule means the last step.
    step_index_ = begin_index_ ? *begin_index_ : find_timestep(timesteps_, timestep).value_or(timesteps_.size(0) - 1);
  }
  const int64_t i = *step_index_;
  const int64_t count = timesteps_.size(0);
  if (i < 0 || i >= count)
    throw Error(where + ": step " + std::to_string(i) + " is past the schedule's end; call set_timesteps again");

  // Lower orders at the end improve stability for few steps.
  const bool lower_order_final =
      i == count - 1 && (c.euler_at_final || (c.lower_order_final && count < 15) || c.final_sigmas_type == "zero");
  const bool lower_order_second = i == count - 2 && c.lower_order_final && count < 15;

  const at::Tensor converted = convert_model_output(model_output, sample);
  std::rotate(model_outputs_.begin(), model_outputs_.begin() + 1, model_outputs_.end());
  model_outputs_.back() = converted;

  const at::Tensor x = sample.to(at::kFloat);  // diffusers upcasts "to avoid precision issues"
  at::Tensor noise;
  if (is_sde(c.algorithm_type))
    noise = randn_tensor(converted.sizes(), std::move(generator),
                         at::TensorOptions(at::kFloat).device(model_output.device()));

  at::Tensor prev_sample;
  if (c.solver_order == 1 || lower_order_nums_ < 1 || lower_order_final) {
    prev_sample = first_order_update(converted, x, noise);
  } else if (c.solver_order == 2 || lower_order_nums_ < 2 || lower_order_second) {
    prev_sample = second_order_update(x, noise);
  } else {
    prev_sample = third_order_update(x, noise);
  }
  if (lower_order_nums_ < c.solver_order) ++lower_order_nums_;
  step_index_ = i + 1;
  return prev_sample.to(converted.scalar_type());
}

}  // namespace diffuse
