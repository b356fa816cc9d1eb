#include "diffuse/schedulers/pndm.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/schedulers/numpy_ops.hpp"

namespace diffuse {

namespace {
const char* const kWho = "PNDMScheduler";
}  // namespace

PNDMSchedulerConfig PNDMSchedulerConfig::from_json(const JsonConfig& json) {
  PNDMSchedulerConfig c;
  c.read(json);
  c.skip_prk_steps = json.get_bool("skip_prk_steps", c.skip_prk_steps);
  c.set_alpha_to_one = json.get_bool("set_alpha_to_one", c.set_alpha_to_one);
  c.prediction_type = json.get_string("prediction_type", c.prediction_type);
  c.timestep_spacing = json.get_string("timestep_spacing", c.timestep_spacing);
  c.steps_offset = json.get_int("steps_offset", c.steps_offset);
  return c;
}

nlohmann::json PNDMSchedulerConfig::to_json() const {
  nlohmann::json json = nlohmann::json::object();
  write(json);
  json["skip_prk_steps"] = skip_prk_steps;
  json["set_alpha_to_one"] = set_alpha_to_one;
  json["prediction_type"] = prediction_type;
  json["timestep_spacing"] = timestep_spacing;
  json["steps_offset"] = steps_offset;
  return json;
}

PNDMScheduler::PNDMScheduler(PNDMSchedulerConfig config)
    : Scheduler(kWho, config.to_json(), PNDMSchedulerConfig{}.to_json()), config_(std::move(config)) {
  check_choice(kWho, "prediction_type", config_.prediction_type, {"epsilon", "v_prediction"});
  check_choice(kWho, "timestep_spacing", config_.timestep_spacing, {"linspace", "leading", "trailing"});
  alphas_cumprod_ = alphas_cumprod_of(make_betas(config_, kWho));
  // The "previous" alpha product of the last step: 1, or that of the first training step.
  final_alpha_cumprod_ = config_.set_alpha_to_one ? at::scalar_tensor(1.0, at::kFloat) : alphas_cumprod_[0];
  timesteps_ = at::empty({0}, at::kLong);
}

PNDMScheduler PNDMScheduler::from_config(const nlohmann::json& config, const std::string& source) {
  return made_from<PNDMScheduler>(config, source);
}

PNDMScheduler PNDMScheduler::from_pretrained(const std::filesystem::path& folder) {
  const std::filesystem::path file = folder / "scheduler_config.json";
  return from_config(JsonConfig::load(file).json(), file.string());
}

void PNDMScheduler::set_timesteps_impl(int64_t num_inference_steps, const TimestepOptions& options) {
  const std::string where = std::string(kWho) + "::set_timesteps";
  if (num_inference_steps < 1)
    throw Error(where + ": num_inference_steps must be positive, got " + std::to_string(num_inference_steps));
  if (options.sigmas) throw Error(where + ": this scheduler takes no sigmas (its noise levels are its betas')");
  if (options.mu) throw Error(where + ": this scheduler takes no mu (it has no dynamic shifting)");
  const int64_t n = num_inference_steps, train = config_.num_train_timesteps;
  if (!config_.skip_prk_steps && n < 4)
    throw Error(where + ": the Runge-Kutta warm-up (skip_prk_steps false) needs at least 4 steps, got " +
                std::to_string(n));

  // diffusers' _timesteps, ascending: the spaced timesteps (linspace rounded to integers) reversed.
  std::vector<double> spaced = spaced_timesteps(config_.timestep_spacing, train, n, config_.steps_offset, kWho);
  std::vector<int64_t> t;
  for (auto it = spaced.rbegin(); it != spaced.rend(); ++it) t.push_back(static_cast<int64_t>(numpy_round(*it)));
  const int64_t count = static_cast<int64_t>(t.size());

  prk_timesteps_.clear();
  plms_timesteps_.clear();
  if (config_.skip_prk_steps) {
    // PLMS (crowsonkb's sampler): every timestep once, the second-to-last twice, then descending.
    plms_timesteps_.assign(t.begin(), t.end() - 1);
    if (count >= 2) plms_timesteps_.push_back(t[static_cast<size_t>(count - 2)]);
    plms_timesteps_.push_back(t.back());
    std::reverse(plms_timesteps_.begin(), plms_timesteps_.end());
  } else {
    // The last four timesteps, each with its half-step, each inner point repeated: three RK4 steps of
    // four model calls. Then PLMS over the rest.
    const int64_t half = train / n / 2;
    std::vector<int64_t> points;
    for (int64_t i = count - 4; i < count; ++i) {
      points.push_back(t[static_cast<size_t>(i)]);
      points.push_back(t[static_cast<size_t>(i)] + half);
    }
    points.pop_back();  // [:-1]
    std::vector<int64_t> doubled;
    for (int64_t p : points) doubled.insert(doubled.end(), {p, p});
    prk_timesteps_.assign(doubled.begin() + 1, doubled.end() - 1);  // .repeat(2)[1:-1]
    std::reverse(prk_timesteps_.begin(), prk_timesteps_.end());
    plms_timesteps_.assign(t.begin(), t.end() - 3);
    std::reverse(plms_timesteps_.begin(), plms_timesteps_.end());
  }
  std::vector<int64_t> all = prk_timesteps_;
  all.insert(all.end(), plms_timesteps_.begin(), plms_timesteps_.end());
  timesteps_ = at::tensor(all, at::kLong);
  num_inference_steps_ = n;

  ets_.clear();
  counter_ = 0;
  cur_model_output_ = at::Tensor();
  cur_sample_ = at::Tensor();
}

at::Tensor PNDMScheduler::step_impl(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                                    std::optional<at::Generator> /*generator*/) {
  if (num_inference_steps_ == 0)
    throw Error(std::string(kWho) + "::step: call set_timesteps before stepping");
  if (model_output.sizes() != sample.sizes())
    throw Error(std::string(kWho) + "::step: model_output " + c10::str(model_output.sizes()) + " and sample " +
                c10::str(sample.sizes()) + " differ in shape");
  const int64_t t = training_step(timestep, alphas_cumprod_.size(0), std::string(kWho) + "::step");
  if (counter_ < num_prk_steps() && !config_.skip_prk_steps) return step_prk(model_output, t, sample);
  return step_plms(model_output, t, sample);
}

at::Tensor PNDMScheduler::step_prk(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) {
  const int64_t diff_to_prev = counter_ % 2 ? 0 : config_.num_train_timesteps / num_inference_steps_ / 2;
  const int64_t prev_timestep = timestep - diff_to_prev;
  // Every call of one Runge-Kutta step starts from the step's first timestep and sample.
  timestep = prk_timesteps_[static_cast<size_t>(counter_ / 4 * 4)];

  at::Tensor output = model_output;
  switch (counter_ % 4) {
    case 0: {
      const at::Tensor term = model_output * (1.0 / 6);
      cur_model_output_ = cur_model_output_.defined() ? cur_model_output_ + term : term;
      ets_.push_back(model_output);
      cur_sample_ = sample;
      break;
    }
    case 1:
    case 2: {
      const at::Tensor term = model_output * (1.0 / 3);
      cur_model_output_ = cur_model_output_.defined() ? cur_model_output_ + term : term;
      break;
    }
    case 3: {
      const at::Tensor term = model_output * (1.0 / 6);
      output = cur_model_output_.defined() ? cur_model_output_ + term : term;
      cur_model_output_ = at::Tensor();
      break;
    }
  }
  const at::Tensor& from = cur_sample_.defined() ? cur_sample_ : sample;
  at::Tensor prev = prev_sample(from, timestep, prev_timestep, output);
  ++counter_;
  return prev;
}

at::Tensor PNDMScheduler::step_plms(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) {
  if (!config_.skip_prk_steps && ets_.size() < 3)
    throw Error(std::string(kWho) + "::step: PLMS steps need the 3 Runge-Kutta steps (12 calls) first");
  int64_t prev_timestep = timestep - config_.num_train_timesteps / num_inference_steps_;
  if (counter_ != 1) {
    if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
    ets_.push_back(model_output);
  } else {
    // The second call repeats the first step's interval with the averaged output (a Heun-like start).
    prev_timestep = timestep;
    timestep = timestep + config_.num_train_timesteps / num_inference_steps_;
  }

  at::Tensor output;
  at::Tensor from = sample;
  const size_t n = ets_.size();
  if (n == 1 && counter_ == 0) {
    output = model_output;
    cur_sample_ = sample;
  } else if (n == 1 && counter_ == 1) {
    output = (model_output + ets_.back()) / 2;
    from = cur_sample_;
    cur_sample_ = at::Tensor();
  } else if (n == 2) {
    output = (ets_[1] * 3 - ets_[0]) / 2;
  } else if (n == 3) {
    output = (ets_[2] * 23 - ets_[1] * 16 + ets_[0] * 5) / 12;
  } else {
    output = (ets_[n - 1] * 55 - ets_[n - 2] * 59 + ets_[n - 3] * 37 - ets_[n - 4] * 9) * (1.0 / 24);
  }
  if (!from.defined()) throw Error(std::string(kWho) + "::step: the steps came out of order; call set_timesteps again");
  at::Tensor prev = prev_sample(from, timestep, prev_timestep, output);
  ++counter_;
  return prev;
}

at::Tensor PNDMScheduler::prev_sample(const at::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                                      const at::Tensor& model_output) const {
  const int64_t count = alphas_cumprod_.size(0);
  if (timestep >= count || prev_timestep >= count)
    throw Error(std::string(kWho) + "::step: timestep " + std::to_string(std::max(timestep, prev_timestep)) +
                " is beyond the " + std::to_string(count) + " training steps");
  // 0-dim float32 tensors, as diffusers indexes alphas_cumprod: the arithmetic rounds where torch's does.
  const at::Tensor alpha_prod_t = alphas_cumprod_[timestep];
  const at::Tensor alpha_prod_t_prev = prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
  const at::Tensor beta_prod_t = at::rsub(alpha_prod_t, 1);
  const at::Tensor beta_prod_t_prev = at::rsub(alpha_prod_t_prev, 1);

  at::Tensor output = model_output;
  if (config_.prediction_type == "v_prediction")
    output = at::pow(alpha_prod_t, 0.5) * model_output + at::pow(beta_prod_t, 0.5) * sample;

  // (alpha_prev - alpha_t) / (sqrt(alpha_t) * (sqrt(alpha_prev) + sqrt(alpha_t))) + 1 = sqrt(alpha_prev / alpha_t)
  const at::Tensor sample_coeff = at::pow(alpha_prod_t_prev / alpha_prod_t, 0.5);
  // The denominator of e_theta(x_t, t) in formula (9).
  const at::Tensor model_output_denom_coeff =
      alpha_prod_t * at::pow(beta_prod_t_prev, 0.5) + at::pow(alpha_prod_t * beta_prod_t * alpha_prod_t_prev, 0.5);
  return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * output / model_output_denom_coeff;
}

}  // namespace diffuse
