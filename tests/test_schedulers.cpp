// The Scheduler interface, its registry, and SD 1.5's schedulers (PNDM, DDIM, Euler, Euler ancestral,
// DPM-Solver multistep) against diffusers: the tiny-sd fixture's timesteps for each scheduler as
// diffusers swapped it in (X.from_config(pipe.scheduler.config)), compared exactly, and every step's
// arithmetic against values derived here independently, in float64, from the papers' closed forms
// (DDIM's update for PNDM's formula (9), the Euler step, the ancestral split, DPM-Solver++ as an
// exponential integrator in sigma). Nothing about a schedule is written here: the configs and step
// counts come from the fixture's reference.json.

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "diffuse/error.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/pipelines/flux_latents.hpp"
#include "diffuse/schedulers/ddim.hpp"
#include "diffuse/schedulers/ddpm_schedule.hpp"
#include "diffuse/schedulers/dpmsolver_multistep.hpp"
#include "diffuse/schedulers/euler_ancestral_discrete.hpp"
#include "diffuse/schedulers/euler_discrete.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"
#include "diffuse/schedulers/numpy_ops.hpp"
#include "diffuse/schedulers/pndm.hpp"
#include "diffuse/schedulers/scheduler.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
using nlohmann::json;

namespace {

std::filesystem::path tiny_sd() { return *test::fixtures_dir() / "tiny-sd"; }

#define REQUIRE_SD_FIXTURES()                                                                      \
  do {                                                                                             \
    DIFFUSE_REQUIRE_FIXTURES();                                                                    \
    if (!std::filesystem::exists(tiny_sd() / "reference.json"))                                    \
      GTEST_SKIP() << "tiny-sd fixtures not found at " << tiny_sd().string() << "; skipping";      \
  } while (0)

// reference.json (which holds -Infinity, as Python's json writes it).
const json& sd_reference() {
  static const json reference = JsonConfig::load(tiny_sd() / "reference.json").json();
  return reference;
}

const SafetensorsFile& sd_tensors() {
  static const SafetensorsFile tensors(tiny_sd() / "reference.safetensors");
  return tensors;
}

// The scheduler config diffusers made for `key` ("ddim", "euler", ...) with X.from_config.
const json& swapped_config(const std::string& key) { return sd_reference().at("scheduler_config_" + key); }

std::vector<double> values(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// alphas_cumprod from a config's beta keys, in float64 straight from the definitions.
std::vector<double> alphas_cumprod_in_double(const json& config) {
  const int64_t n = config.at("num_train_timesteps").get<int64_t>();
  const double b0 = config.at("beta_start").get<double>(), b1 = config.at("beta_end").get<double>();
  const bool scaled = config.at("beta_schedule").get<std::string>() == "scaled_linear";
  std::vector<double> out;
  double product = 1;
  for (int64_t i = 0; i < n; ++i) {
    const double f = static_cast<double>(i) / static_cast<double>(n - 1);
    const double beta = scaled ? std::pow(std::sqrt(b0) + f * (std::sqrt(b1) - std::sqrt(b0)), 2) : b0 + f * (b1 - b0);
    product *= 1 - beta;
    out.push_back(product);
  }
  return out;
}

// The sigma of a (fractional) training timestep: linear interpolation of sqrt((1 - a) / a).
double sigma_at(const std::vector<double>& alphas_cumprod, double t) {
  auto sigma = [&](size_t i) { return std::sqrt((1 - alphas_cumprod[i]) / alphas_cumprod[i]); };
  const auto lo = static_cast<size_t>(std::floor(t));
  if (static_cast<double>(lo) == t) return sigma(lo);
  return sigma(lo) + (t - static_cast<double>(lo)) * (sigma(lo + 1) - sigma(lo));
}

// A schedule's sigmas at its timesteps: against the definition in float64 (within what float32
// training alphas allow: 1 - alpha near alpha = 1 cancels, so the smallest sigmas carry ~1e-5 of
// relative error), and against the scheduler's own float32 alphas (to float32 rounding).
void expect_sigmas_interpolated(const std::vector<double>& sigmas, const std::vector<double>& timesteps,
                                const std::vector<double>& alphas_cumprod_double,
                                const std::vector<double>& alphas_cumprod_float) {
  for (size_t i = 0; i < timesteps.size(); ++i) {
    EXPECT_NEAR(sigmas[i], sigma_at(alphas_cumprod_double, timesteps[i]), 1e-4 * sigmas[i]) << i;
    EXPECT_NEAR(sigmas[i], sigma_at(alphas_cumprod_float, timesteps[i]), 1e-6 * sigmas[i]) << i;
  }
}

// DDIM's deterministic update (eta 0) from a_t to a_prev: formula (12) of Song et al.
at::Tensor ddim_update(const at::Tensor& x, const at::Tensor& eps, double a_t, double a_prev) {
  const at::Tensor x0 = (x - std::sqrt(1 - a_t) * eps) / std::sqrt(a_t);
  return std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev) * eps;
}

at::Tensor random_latents(uint64_t seed) {
  return at::randn({1, 4, 8, 12}, cpu_generator(seed), at::TensorOptions(at::kFloat));
}

}  // namespace

// ---- timesteps against diffusers ---------------------------------------------------------------------

TEST(Schedulers, PipelinePndmTimestepsMatchDiffusers) {
  REQUIRE_SD_FIXTURES();
  const std::unique_ptr<Scheduler> scheduler = load_scheduler(tiny_sd() / "pipeline" / "scheduler");
  EXPECT_EQ(scheduler->class_name(), "PNDMScheduler");
  scheduler->set_timesteps(sd_reference().at("num_inference_steps").get<int64_t>());
  const at::Tensor expected = sd_tensors().load("timesteps");
  ASSERT_EQ(scheduler->timesteps().scalar_type(), at::kLong);
  EXPECT_TRUE(scheduler->timesteps().to(at::kFloat).equal(expected))
      << scheduler->timesteps() << " vs " << expected;
  // With skip_prk_steps, n steps are n + 1 model calls; the first UNet call is at the first timestep.
  EXPECT_EQ(scheduler->timesteps().size(0), sd_reference().at("num_inference_steps").get<int64_t>() + 1);
  EXPECT_EQ(scheduler->timesteps()[0].item<float>(), sd_tensors().load("unet_timestep_step0")[0].item<float>());
  EXPECT_EQ(scheduler->init_noise_sigma(), 1.0);
}

TEST(Schedulers, PndmFirstStepMatchesDiffusers) {
  REQUIRE_SD_FIXTURES();
  // The fixture's first UNet call (on [negative; positive]), guided as StableDiffusionPipeline does,
  // then PNDM's first step: diffusers' latents after step 0.
  const std::unique_ptr<Scheduler> scheduler = load_scheduler(tiny_sd() / "pipeline" / "scheduler");
  scheduler->set_timesteps(sd_reference().at("num_inference_steps").get<int64_t>());
  const at::Tensor latents = sd_tensors().load("latents_init");
  const double t = scheduler->timesteps()[0].item<double>();
  const at::Tensor unet_sample = sd_tensors().load("unet_sample_step0");
  EXPECT_TRUE(at::cat({latents, latents}).equal(scheduler->scale_model_input(unet_sample, t)));
  const std::vector<at::Tensor> out = sd_tensors().load("unet_out_step0").chunk(2);
  const double guidance = sd_reference().at("guidance_scale").get<double>();
  const at::Tensor noise_pred = out[0] + guidance * (out[1] - out[0]);
  const at::Tensor next = scheduler->step(noise_pred, t, latents);
  EXPECT_TENSORS_CLOSE(next, sd_tensors().load("latents_after_step_0"), 1e-6);
  test::print_error("PNDM step 0 vs latents_after_step_0", next, sd_tensors().load("latents_after_step_0"));
}

TEST(Schedulers, SwappedSchedulerTimestepsMatchDiffusers) {
  REQUIRE_SD_FIXTURES();
  const int64_t steps = sd_reference().at("other_scheduler_steps").get<int64_t>();
  for (const auto& [key, class_name] : sd_reference().at("other_schedulers").items()) {
    SCOPED_TRACE(key);
    // From the config diffusers ended up with, and by swapping from the pipeline's PNDM config as
    // diffusers did: both must give the same schedule.
    for (const json* config : {&swapped_config(key), &swapped_config("pndm")}) {
      std::unique_ptr<Scheduler> scheduler = make_scheduler(class_name.get<std::string>(), *config);
      EXPECT_EQ(scheduler->class_name(), class_name.get<std::string>());
      scheduler->set_timesteps(steps);
      const at::Tensor expected = sd_tensors().load(key + "_timesteps");
      const bool is_float = key == "euler" || key == "euler_ancestral";
      EXPECT_EQ(scheduler->timesteps().scalar_type(), is_float ? at::kFloat : at::kLong);
      EXPECT_TRUE(scheduler->timesteps().to(at::kFloat).equal(expected))
          << scheduler->timesteps() << " vs " << expected;
    }
  }
}

TEST(Schedulers, FromConfigKeepsTheKeysDiffusersKeeps) {
  REQUIRE_SD_FIXTURES();
  // make_scheduler(X, pipeline config).config() is what diffusers' X.from_config(...).config holds:
  // the class's keys (defaults where the source only had defaults), the source's other keys, and
  // _use_default_values.
  for (const auto& [key, class_name] : sd_reference().at("other_schedulers").items()) {
    SCOPED_TRACE(key);
    const json& expected = swapped_config(key);
    const std::unique_ptr<Scheduler> scheduler = make_scheduler(class_name.get<std::string>(), swapped_config("pndm"));
    const json& actual = scheduler->config();
    for (const auto& [name, value] : expected.items()) {
      if (name == "_use_default_values") continue;
      ASSERT_TRUE(actual.contains(name)) << name;
      EXPECT_EQ(actual.at(name), value) << name;
    }
    for (const auto& [name, value] : actual.items()) EXPECT_TRUE(expected.contains(name)) << "extra key " << name;
    const auto as_set = [](const json& list) { return list.get<std::set<std::string>>(); };
    EXPECT_EQ(as_set(actual.at("_use_default_values")), as_set(expected.at("_use_default_values")));
  }
}

TEST(Schedulers, AFileNamesEveryKeySoItsValuesCarryOver) {
  REQUIRE_SD_FIXTURES();
  // A scheduler_config.json lists every key, so nothing is a default: its "leading" spacing carries
  // over to Euler (as diffusers does for a pipeline loaded from disk), unlike the fixture's swap above.
  const std::unique_ptr<Scheduler> pndm = load_scheduler(tiny_sd() / "pipeline" / "scheduler");
  EXPECT_FALSE(pndm->config().contains("_use_default_values"));
  const std::unique_ptr<Scheduler> euler = make_scheduler("euler", pndm->config());
  EXPECT_EQ(euler->config().at("timestep_spacing"), "leading");
  EXPECT_EQ(euler->config().at("_class_name"), "EulerDiscreteScheduler");
  EXPECT_EQ(euler->config().at("skip_prk_steps"), true);  // PNDM's key, kept for later swaps
  euler->set_timesteps(4);
  EXPECT_EQ(values(euler->timesteps()), (std::vector<double>{751, 501, 251, 1}));
}

TEST(Schedulers, AConstructedSchedulerPassesOnlyTheValuesItWasGiven) {
  // diffusers' PNDMScheduler() lists every argument as a default, so Euler made from its config keeps
  // Euler's own defaults; a value given (here the spacing) carries over.
  EXPECT_EQ(make_scheduler("euler", PNDMScheduler().Scheduler::config())->config().at("timestep_spacing"), "linspace");
  PNDMSchedulerConfig c;
  c.timestep_spacing = "trailing";
  const PNDMScheduler trailing(c);
  EXPECT_EQ(make_scheduler("euler", trailing.Scheduler::config())->config().at("timestep_spacing"), "trailing");
  const auto defaults = trailing.Scheduler::config().at("_use_default_values").get<std::set<std::string>>();
  EXPECT_TRUE(defaults.count("beta_schedule"));
  EXPECT_FALSE(defaults.count("timestep_spacing"));
}

// ---- step arithmetic --------------------------------------------------------------------------------

TEST(Schedulers, PndmPlmsCombinesPastOutputsWithAdamsBashforthWeights) {
  REQUIRE_SD_FIXTURES();
  const json& config = swapped_config("pndm");
  PNDMScheduler scheduler = PNDMScheduler::from_config(config);
  const std::vector<double> ac = alphas_cumprod_in_double(config);
  EXPECT_TRUE(test::tensors_close(scheduler.alphas_cumprod(), at::tensor(ac, at::kDouble), 1e-5));

  const int64_t n = sd_reference().at("num_inference_steps").get<int64_t>();
  scheduler.set_timesteps(n);
  const std::vector<double> t = values(scheduler.timesteps());
  ASSERT_EQ(t.size(), static_cast<size_t>(n + 1));
  const double first_alpha = config.at("set_alpha_to_one").get<bool>() ? 1.0 : ac[0];
  auto alpha = [&](double timestep) { return timestep >= 0 ? ac[static_cast<size_t>(timestep)] : first_alpha; };
  const double stride = static_cast<double>(config.at("num_train_timesteps").get<int64_t>() / n);

  std::vector<at::Tensor> e;
  for (int i = 0; i <= n; ++i) e.push_back(random_latents(100 + i));
  const at::Tensor x0 = random_latents(7);
  // Call 0 at t[0]: a first-order step with e0. Call 1 at t[1] == t[2]: the same interval again from
  // the same sample, with the mean of e0 and e1. Then PLMS over e0, e2, e3, ... (e1 is not kept).
  at::Tensor x = scheduler.step(e[0], t[0], x0);
  const at::Tensor first = x;
  EXPECT_TRUE(
      test::tensors_close(x, ddim_update(x0.to(at::kDouble), e[0].to(at::kDouble), alpha(t[0]), alpha(t[1])), 1e-5));
  x = scheduler.step(e[1], t[1], x);
  at::Tensor expected =
      ddim_update(x0.to(at::kDouble), ((e[0] + e[1]) / 2).to(at::kDouble), alpha(t[0]), alpha(t[1]));
  EXPECT_TRUE(test::tensors_close(x, expected, 1e-5));
  const std::vector<at::Tensor> history = {e[0].to(at::kDouble), e[2].to(at::kDouble), e[3].to(at::kDouble),
                                           e[4].to(at::kDouble)};
  const std::vector<at::Tensor> combined = {
      (3 * history[1] - history[0]) / 2,
      (23 * history[2] - 16 * history[1] + 5 * history[0]) / 12,
      (55 * history[3] - 59 * history[2] + 37 * history[1] - 9 * history[0]) / 24};
  for (int call = 2; call <= n; ++call) {
    const at::Tensor before = x.to(at::kDouble);
    x = scheduler.step(e[call], t[call], x);
    expected = ddim_update(before, combined[call - 2], alpha(t[call]), alpha(t[call] - stride));
    EXPECT_TRUE(test::tensors_close(x, expected, 1e-5)) << "call " << call;
  }
  // set_timesteps starts over: the first call is a first-order step again.
  scheduler.set_timesteps(n);
  EXPECT_TRUE(scheduler.step(e[0], t[0], x0).equal(first));
}

TEST(Schedulers, PndmRungeKuttaWarmUp) {
  PNDMSchedulerConfig c;
  c.skip_prk_steps = false;
  PNDMScheduler scheduler(c);
  scheduler.set_timesteps(10);
  // The last four spaced timesteps with their half steps, inner points repeated; then PLMS.
  EXPECT_EQ(values(scheduler.timesteps()),
            (std::vector<double>{900, 850, 850, 800, 800, 750, 750, 700, 700, 650, 650, 600, 600, 500, 400, 300,
                                 200, 100, 0}));
  EXPECT_EQ(scheduler.num_prk_steps(), 12);
  // One RK4 step is four calls; the fourth returns the step from 900 to 800 with (k1 + 2 k2 + 2 k3 + k4) / 6.
  const at::Tensor x = random_latents(3);
  std::vector<at::Tensor> k;
  for (int i = 0; i < 4; ++i) k.push_back(random_latents(20 + i));
  const std::vector<double> t = values(scheduler.timesteps());
  at::Tensor out;
  for (int i = 0; i < 4; ++i) out = scheduler.step(k[i], t[i], i == 0 ? x : out);
  const std::vector<double> ac = values(scheduler.alphas_cumprod());
  const at::Tensor mean = ((k[0] + 2 * k[1] + 2 * k[2] + k[3]) / 6).to(at::kDouble);
  EXPECT_TRUE(test::tensors_close(out, ddim_update(x.to(at::kDouble), mean, ac[900], ac[800]), 1e-5));
  EXPECT_ERROR_CONTAINS(scheduler.set_timesteps(3), "at least 4 steps");
}

TEST(Schedulers, DdimEtaZeroIsTheClosedForm) {
  REQUIRE_SD_FIXTURES();
  const json& config = swapped_config("ddim");
  const std::vector<double> ac = alphas_cumprod_in_double(config);
  const int64_t n = sd_reference().at("other_scheduler_steps").get<int64_t>();
  const double stride = static_cast<double>(config.at("num_train_timesteps").get<int64_t>() / n);
  const double final_alpha = config.at("set_alpha_to_one").get<bool>() ? 1.0 : ac[0];
  auto alpha = [&](double t) { return t >= 0 ? ac[static_cast<size_t>(t)] : final_alpha; };

  std::unique_ptr<Scheduler> scheduler = make_scheduler("ddim", config);
  scheduler->set_timesteps(n);
  at::Tensor x = random_latents(1);
  for (double t : values(scheduler->timesteps())) {
    const at::Tensor eps = random_latents(static_cast<uint64_t>(t) + 10);
    EXPECT_TRUE(scheduler->scale_model_input(x, t).equal(x));
    const at::Tensor before = x.to(at::kDouble);
    x = scheduler->step(eps, t, x);
    EXPECT_TRUE(test::tensors_close(x, ddim_update(before, eps.to(at::kDouble), alpha(t), alpha(t - stride)), 1e-5))
        << "t " << t;
  }
}

TEST(Schedulers, DdimVPredictionClipAndEta) {
  DDIMSchedulerConfig c;
  c.prediction_type = "v_prediction";
  c.clip_sample = false;
  DDIMScheduler scheduler(c);
  scheduler.set_timesteps(10);
  const std::vector<double> ac = values(scheduler.alphas_cumprod());
  const double t = scheduler.timesteps()[0].item<double>(), prev = t - 100;
  const at::Tensor x = random_latents(1).to(at::kDouble), v = random_latents(2).to(at::kDouble);
  // v = sqrt(a) eps - sqrt(1 - a) x0  =>  x0 = sqrt(a) x - sqrt(1 - a) v, eps = sqrt(a) v + sqrt(1 - a) x.
  const double a = ac[static_cast<size_t>(t)], ap = ac[static_cast<size_t>(prev)];
  const at::Tensor x0 = std::sqrt(a) * x - std::sqrt(1 - a) * v, eps = std::sqrt(a) * v + std::sqrt(1 - a) * x;
  EXPECT_TRUE(test::tensors_close(scheduler.step(v.to(at::kFloat), t, x.to(at::kFloat)),
                                  std::sqrt(ap) * x0 + std::sqrt(1 - ap) * eps, 1e-5));

  // clip_sample (the default) clamps x0 to [-clip_sample_range, clip_sample_range].
  DDIMSchedulerConfig clipped;
  clipped.clip_sample_range = 0.5;
  DDIMScheduler clipping(clipped);
  clipping.set_timesteps(10);
  const at::Tensor e = random_latents(4).to(at::kDouble);
  const at::Tensor x0_clipped = ((x - std::sqrt(1 - a) * e) / std::sqrt(a)).clamp(-0.5, 0.5);
  EXPECT_TRUE(test::tensors_close(clipping.step(e.to(at::kFloat), t, x.to(at::kFloat)),
                                  std::sqrt(ap) * x0_clipped + std::sqrt(1 - ap) * e, 1e-5));

  // eta > 0 adds std_dev_t * noise, the noise drawn from the generator given.
  DDIMSchedulerConfig plain;
  plain.clip_sample = false;
  DDIMScheduler noisy(plain);
  noisy.set_timesteps(10);
  noisy.set_eta(1.0);
  const double variance = (1 - ap) / (1 - a) * (1 - a / ap), std_dev = std::sqrt(variance);
  const at::Tensor noise = at::randn({1, 4, 8, 12}, cpu_generator(5), at::TensorOptions(at::kFloat)).to(at::kDouble);
  const at::Tensor x0_e = (x - std::sqrt(1 - a) * e) / std::sqrt(a);
  const at::Tensor expected = std::sqrt(ap) * x0_e + std::sqrt(1 - ap - variance) * e + std_dev * noise;
  EXPECT_TRUE(test::tensors_close(noisy.step(e.to(at::kFloat), t, x.to(at::kFloat), cpu_generator(5)), expected, 1e-5));
  EXPECT_ERROR_CONTAINS(noisy.set_eta(-1), "eta");
}

TEST(Schedulers, EulerStepsAlongTheOdeDerivative) {
  REQUIRE_SD_FIXTURES();
  const json& config = swapped_config("euler");
  const std::vector<double> ac = alphas_cumprod_in_double(config);
  EulerDiscreteScheduler scheduler = EulerDiscreteScheduler::from_config(config);
  scheduler.set_timesteps(sd_reference().at("other_scheduler_steps").get<int64_t>());
  const std::vector<double> t = values(scheduler.timesteps());
  const std::vector<double> sigmas = values(scheduler.sigmas());
  ASSERT_EQ(sigmas.size(), t.size() + 1);
  expect_sigmas_interpolated(sigmas, t, ac, values(scheduler.alphas_cumprod()));
  EXPECT_EQ(sigmas.back(), 0.0);  // final_sigmas_type "zero"
  // linspace spacing: the initial noise is the largest sigma.
  EXPECT_EQ(scheduler.init_noise_sigma(), static_cast<double>(static_cast<float>(sigmas[0])));

  at::Tensor x = random_latents(1);
  for (size_t i = 0; i < t.size(); ++i) {
    const at::Tensor scaled = scheduler.scale_model_input(x, t[i]);
    EXPECT_TRUE(test::tensors_close(scaled, x.to(at::kDouble) / std::sqrt(sigmas[i] * sigmas[i] + 1), 1e-6));
    const at::Tensor eps = random_latents(30 + i);
    // x0 = x - sigma * eps; x_next = x + (sigma_next - sigma) * (x - x0) / sigma.
    const at::Tensor before = x.to(at::kDouble), x0 = before - sigmas[i] * eps.to(at::kDouble);
    x = scheduler.step(eps, t[i], x);
    EXPECT_TRUE(test::tensors_close(x, before + (sigmas[i + 1] - sigmas[i]) * (before - x0) / sigmas[i], 1e-6)) << i;
  }
  EXPECT_ERROR_CONTAINS(scheduler.step(x, t.back(), x), "past the schedule's end");
}

TEST(Schedulers, EulerOptions) {
  // v-prediction: x0 = v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1).
  EulerDiscreteSchedulerConfig c;
  c.prediction_type = "v_prediction";
  EulerDiscreteScheduler v(c);
  v.set_timesteps(8);
  const double s = v.sigmas()[0].item<double>(), s_next = v.sigmas()[1].item<double>();
  const at::Tensor x = random_latents(1).to(at::kDouble), out = random_latents(2).to(at::kDouble);
  const at::Tensor x0 = out * (-s / std::sqrt(s * s + 1)) + x / (s * s + 1);
  EXPECT_TRUE(test::tensors_close(v.step(out.to(at::kFloat), v.timesteps()[0].item<double>(), x.to(at::kFloat)),
                                  x + (s_next - s) * (x - x0) / s, 1e-5));

  // Karras sigmas run from the schedule's largest sigma to its smallest, rho = 7, then the final 0.
  EulerDiscreteSchedulerConfig k;
  k.use_karras_sigmas = true;
  EulerDiscreteScheduler karras(k);
  karras.set_timesteps(6);
  const std::vector<double> ks = values(karras.sigmas());
  ASSERT_EQ(ks.size(), 7u);
  EulerDiscreteScheduler plain;
  plain.set_timesteps(6);
  EXPECT_FLOAT_EQ(ks[0], plain.sigmas()[0].item<float>());
  EXPECT_FLOAT_EQ(ks[5], plain.sigmas()[5].item<float>());
  for (int i = 0; i < 6; ++i) {
    const double r = i / 5.0, lo = std::pow(ks[5], 1 / 7.0), hi = std::pow(ks[0], 1 / 7.0);
    EXPECT_NEAR(ks[static_cast<size_t>(i)], std::pow(hi + r * (lo - hi), 7), 1e-6 * ks[0]) << i;
  }
  // ...and their timesteps decrease from the last training step.
  const std::vector<double> kt = values(karras.timesteps());
  EXPECT_NEAR(kt[0], 999, 1e-3);
  for (size_t i = 1; i < kt.size(); ++i) EXPECT_LT(kt[i], kt[i - 1]);

  // Given sigmas: with leading spacing the sigmas are training sigmas, so their timesteps come back exactly.
  EulerDiscreteSchedulerConfig l;
  l.timestep_spacing = "leading";
  l.steps_offset = 1;
  EulerDiscreteScheduler leading(l);
  leading.set_timesteps(5);
  EXPECT_EQ(values(leading.timesteps()), (std::vector<double>{801, 601, 401, 201, 1}));
  EXPECT_DOUBLE_EQ(leading.init_noise_sigma(),
                   static_cast<double>(std::sqrt(std::pow(leading.sigmas().max().item<float>(), 2.0f) + 1.0f)));
  EulerDiscreteScheduler given(l);
  given.set_timesteps(5, {.sigmas = values(leading.sigmas())});
  EXPECT_TRUE(given.timesteps().equal(leading.timesteps())) << given.timesteps();
  EXPECT_TRUE(given.sigmas().equal(leading.sigmas()));
  EXPECT_ERROR_CONTAINS(given.set_timesteps(5, {.sigmas = std::vector<double>(5, 1.0)}), "num_inference_steps + 1");
  EXPECT_ERROR_CONTAINS(given.set_timesteps(5, {.mu = 1.0}), "mu");

  // final_sigmas_type sigma_min ends at the first training sigma instead of 0.
  EulerDiscreteSchedulerConfig m;
  m.final_sigmas_type = "sigma_min";
  EulerDiscreteScheduler sigma_min(m);
  sigma_min.set_timesteps(4);
  EXPECT_EQ(sigma_min.sigmas()[-1].item<float>(), sigmas_of(sigma_min.alphas_cumprod())[0].item<float>());

  // Churn adds noise from the generator before the step.
  EulerDiscreteScheduler churn;
  churn.set_timesteps(4);
  churn.set_churn({.s_churn = 1.0});
  const double c0 = churn.sigmas()[0].item<double>(), c1 = churn.sigmas()[1].item<double>();
  const double gamma = std::min(1.0 / 4, std::sqrt(2.0) - 1), hat = static_cast<float>(c0 * (gamma + 1));
  const at::Tensor noise = at::randn({1, 4, 8, 12}, cpu_generator(9), at::TensorOptions(at::kFloat)).to(at::kDouble);
  const at::Tensor raised = x + noise * std::sqrt(hat * hat - c0 * c0);
  const at::Tensor eps = out;
  EXPECT_TRUE(test::tensors_close(
      churn.step(eps.to(at::kFloat), churn.timesteps()[0].item<double>(), x.to(at::kFloat), cpu_generator(9)),
      raised + (c1 - hat) * eps, 1e-5));
}

TEST(Schedulers, EulerAncestralDrawsItsNoiseFromTheGenerator) {
  REQUIRE_SD_FIXTURES();
  const json& config = swapped_config("euler_ancestral");
  std::unique_ptr<Scheduler> scheduler = make_scheduler("euler_a", config);
  EXPECT_EQ(scheduler->class_name(), "EulerAncestralDiscreteScheduler");
  scheduler->set_timesteps(sd_reference().at("other_scheduler_steps").get<int64_t>());
  const auto& typed = dynamic_cast<const EulerAncestralDiscreteScheduler&>(*scheduler);
  const std::vector<double> t = values(scheduler->timesteps()), sigmas = values(typed.sigmas());
  const std::vector<double> ac = alphas_cumprod_in_double(config);
  expect_sigmas_interpolated(sigmas, t, ac, values(typed.alphas_cumprod()));
  EXPECT_EQ(scheduler->init_noise_sigma(), static_cast<double>(static_cast<float>(sigmas[0])));

  // As the pipeline does: initial latents from the generator, then one noise draw per step from it.
  at::Generator generator = cpu_generator(0), replay = cpu_generator(0);
  at::Tensor x = at::randn({1, 4, 8, 12}, generator, at::TensorOptions(at::kFloat));
  at::Tensor expected = at::randn({1, 4, 8, 12}, replay, at::TensorOptions(at::kFloat)).to(at::kDouble);
  ASSERT_TRUE(x.to(at::kDouble).equal(expected));
  for (size_t i = 0; i < t.size(); ++i) {
    const at::Tensor eps = random_latents(40 + i);
    const double s = sigmas[i], s_to = sigmas[i + 1];
    const double up = std::sqrt(s_to * s_to * (s * s - s_to * s_to) / (s * s)), down = std::sqrt(s_to * s_to - up * up);
    const at::Tensor noise = at::randn({1, 4, 8, 12}, replay, at::TensorOptions(at::kFloat)).to(at::kDouble);
    // An Euler step to sigma_down, then noise of standard deviation sigma_up.
    expected = expected + (down - s) * eps.to(at::kDouble) + noise * up;
    scheduler->scale_model_input(x, t[i]);  // what the UNet would see; it also finds the step index
    x = scheduler->step(eps, t[i], x, generator);
    EXPECT_TRUE(test::tensors_close(x, expected, 1e-5)) << "step " << i;
    expected = x.to(at::kDouble);
  }
  // The generators are in step: the last step drew too (its sigma_up is 0).
  EXPECT_TRUE(at::randn({3}, generator).equal(at::randn({3}, replay)));
}

TEST(Schedulers, DpmSolverPlusPlusSecondOrderMultistep) {
  REQUIRE_SD_FIXTURES();
  const json& config = swapped_config("dpmsolver_multistep");
  const std::vector<double> ac = alphas_cumprod_in_double(config);
  std::unique_ptr<Scheduler> scheduler = make_scheduler("dpm++2m", config);
  EXPECT_EQ(scheduler->class_name(), "DPMSolverMultistepScheduler");
  scheduler->set_timesteps(sd_reference().at("other_scheduler_steps").get<int64_t>());
  const auto& typed = dynamic_cast<const DPMSolverMultistepScheduler&>(*scheduler);
  const std::vector<double> t = values(scheduler->timesteps()), sigmas = values(typed.sigmas());
  expect_sigmas_interpolated(sigmas, t, ac, values(typed.alphas_cumprod()));
  EXPECT_EQ(sigmas.back(), 0.0);

  // In sigma terms (x = alpha * (x0 + sigma * eps), alpha = 1 / sqrt(sigma^2 + 1)), DPM-Solver++ is an
  // exponential integrator: x_t / alpha_t = D + (sigma_t / sigma_s) * (x_s / alpha_s - D), with D the
  // data prediction (first order) or D = m0 + (m0 - m1) / (2 r0), r0 = log(s_prev / s) / log(s / s_t)
  // (second order). The first step is first order; the last, to sigma 0, returns the data prediction.
  auto alpha = [](double s) { return 1 / std::sqrt(s * s + 1); };
  at::Tensor x = random_latents(1);
  at::Tensor previous_x0;
  for (size_t i = 0; i < t.size(); ++i) {
    const at::Tensor eps = random_latents(50 + i).to(at::kDouble);
    const double s = sigmas[i], s_t = sigmas[i + 1];
    const at::Tensor x_scaled = x.to(at::kDouble) / alpha(s);
    const at::Tensor x0 = x_scaled - s * eps;  // the data prediction
    at::Tensor d = x0;
    if (i > 0 && i + 1 < t.size()) {
      const double r0 = std::log(sigmas[i - 1] / s) / std::log(s / s_t);
      d = x0 + (x0 - previous_x0) / (2 * r0);
    }
    const at::Tensor expected = s_t == 0 ? d : alpha(s_t) * (d + (s_t / s) * (x_scaled - d));
    EXPECT_EQ(scheduler->scale_model_input(x, t[i]).data_ptr(), x.data_ptr());
    x = scheduler->step(eps.to(at::kFloat), t[i], x);
    EXPECT_TRUE(test::tensors_close(x, expected, 1e-5)) << "step " << i;
    previous_x0 = x0;
  }
}

TEST(Schedulers, DpmSolverOptions) {
  // The other algorithms and orders run, each step first order at first, with the SDE ones drawing noise.
  for (const std::string algorithm : {"dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"}) {
    for (int64_t order : {1, 2, 3}) {
      for (const std::string solver : {"midpoint", "heun"}) {
        if (order == 3 && algorithm == "sde-dpmsolver") continue;
        SCOPED_TRACE(algorithm + " order " + std::to_string(order) + " " + solver);
        DPMSolverMultistepSchedulerConfig c;
        c.algorithm_type = algorithm;
        c.solver_order = order;
        c.solver_type = solver;
        if (algorithm == "dpmsolver" || algorithm == "sde-dpmsolver") c.final_sigmas_type = "sigma_min";
        DPMSolverMultistepScheduler scheduler(c);
        scheduler.set_timesteps(6);
        at::Generator generator = cpu_generator(1);
        at::Tensor x = random_latents(1);
        for (int64_t i = 0; i < 6; ++i) {
          const double t = scheduler.timesteps()[i].item<double>();
          x = scheduler.step(random_latents(60 + i) * 0.1, t, x, generator);
        }
        EXPECT_TRUE(x.isfinite().all().item<bool>());
        EXPECT_EQ(x.scalar_type(), at::kFloat);
      }
    }
  }
  // Karras sigmas: timesteps are rounded training steps, from the last.
  DPMSolverMultistepSchedulerConfig k;
  k.use_karras_sigmas = true;
  DPMSolverMultistepScheduler karras(k);
  karras.set_timesteps(10);
  EXPECT_EQ(karras.timesteps()[0].item<int64_t>(), 999);
  EXPECT_EQ(karras.timesteps().scalar_type(), at::kLong);
  // Refusals name the key and the value.
  DPMSolverMultistepSchedulerConfig beta;
  beta.use_beta_sigmas = true;
  EXPECT_ERROR_CONTAINS(DPMSolverMultistepScheduler{beta}, "use_beta_sigmas");
  DPMSolverMultistepSchedulerConfig bad;
  bad.algorithm_type = "unipc";
  EXPECT_ERROR_CONTAINS(DPMSolverMultistepScheduler{bad}, "key 'algorithm_type' is 'unipc'");
  DPMSolverMultistepSchedulerConfig zero;
  zero.algorithm_type = "dpmsolver";
  EXPECT_ERROR_CONTAINS(DPMSolverMultistepScheduler{zero}, "final_sigmas_type 'zero'");
  EXPECT_ERROR_CONTAINS(DPMSolverMultistepScheduler().set_timesteps(4, {.sigmas = std::vector<double>{1, 0}}),
                        "takes no sigmas");
  // diffusers' aliases: deis is dpmsolver++, bh2 is midpoint.
  const auto aliased = make_scheduler("dpmsolver++", json{{"algorithm_type", "deis"}, {"solver_type", "bh2"}});
  EXPECT_EQ(aliased->config().at("algorithm_type"), "dpmsolver++");
  EXPECT_EQ(aliased->config().at("solver_type"), "midpoint");
}

TEST(Schedulers, FlowMatchStepsByTimestepThroughTheInterface) {
  DIFFUSE_REQUIRE_FIXTURES();
  const json config =
      JsonConfig::load(test::tiny_flux_pipeline() / "scheduler" / "scheduler_config.json").json();
  std::unique_ptr<Scheduler> scheduler = make_scheduler("flow-match", config);
  auto by_index = FlowMatchEulerDiscreteScheduler::from_pretrained(test::tiny_flux_pipeline() / "scheduler");
  const auto& c = by_index.config();
  const double mu = calculate_shift(24, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift);
  scheduler->set_timesteps(4, {.mu = mu, .sigmas = flux_sigmas(4)});
  by_index.set_timesteps(4, mu, flux_sigmas(4));
  EXPECT_TRUE(scheduler->timesteps().equal(test::tiny_flux_reference().load("timesteps")));
  EXPECT_EQ(scheduler->timesteps().scalar_type(), at::kFloat);

  const at::Tensor first = scheduler->step(test::tiny_flux_reference().load("transformer_out_step0"),
                                           scheduler->timesteps()[0].item<double>(),
                                           test::tiny_flux_reference().load("latents_init"));
  EXPECT_TENSORS_CLOSE(first, test::tiny_flux_reference().load("latents_after_step_0"), 1e-4);
  at::Tensor a = first, b = by_index.step(test::tiny_flux_reference().load("transformer_out_step0"), 0,
                                          test::tiny_flux_reference().load("latents_init"));
  EXPECT_TRUE(a.equal(b));
  for (int64_t i = 1; i < 4; ++i) {
    const at::Tensor out = random_latents(70 + i).reshape({1, 24, 16});
    a = scheduler->step(out, scheduler->timesteps()[i].item<double>(), a);
    b = by_index.step(out, i, b);
    EXPECT_TRUE(a.equal(b)) << i;
  }
}

// ---- the registry -----------------------------------------------------------------------------------

TEST(SchedulerRegistry, NamesAndAliases) {
  const std::vector<std::string> names = scheduler_names();
  for (const char* name : {"DDIMScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler",
                           "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler", "PNDMScheduler"})
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
  const std::vector<std::pair<std::string, std::string>> aliases = {
      {"pndm", "PNDMScheduler"},
      {"ddim", "DDIMScheduler"},
      {"euler", "EulerDiscreteScheduler"},
      {"euler_a", "EulerAncestralDiscreteScheduler"},
      {"euler-ancestral", "EulerAncestralDiscreteScheduler"},
      {"dpm++2m", "DPMSolverMultistepScheduler"},
      {"DPMSolver++", "DPMSolverMultistepScheduler"},
      {"flow-match", "FlowMatchEulerDiscreteScheduler"},
      {"flow_match_euler", "FlowMatchEulerDiscreteScheduler"},
      {"EulerDiscreteScheduler", "EulerDiscreteScheduler"}};
  for (const auto& [alias, class_name] : aliases) {
    const std::unique_ptr<Scheduler> scheduler = make_scheduler(alias, json::object());
    EXPECT_EQ(scheduler->class_name(), class_name) << alias;
    EXPECT_EQ(scheduler->config().at("_class_name"), class_name) << alias;
  }
}

TEST(SchedulerRegistry, UnknownNamesAreRefusedWithTheKnownOnes) {
  const std::string message = test::error_of([] { make_scheduler("UniPCMultistepScheduler", json::object()); });
  EXPECT_NE(message.find("unknown scheduler 'UniPCMultistepScheduler'"), std::string::npos) << message;
  for (const char* known : {"PNDMScheduler", "DDIMScheduler", "euler_a", "dpm++2m", "flow_match"})
    EXPECT_NE(message.find(known), std::string::npos) << known << " missing from: " << message;

  const auto folder = test::temporary_folder("scheduler_unknown_class");
  std::ofstream(folder / "scheduler_config.json") << R"({"_class_name": "LCMScheduler"})";
  const std::string file_message = test::error_of([&] { load_scheduler(folder); });
  EXPECT_NE(file_message.find("scheduler_config.json"), std::string::npos) << file_message;
  EXPECT_NE(file_message.find("LCMScheduler"), std::string::npos) << file_message;
  EXPECT_NE(file_message.find("PNDMScheduler"), std::string::npos) << file_message;
  std::ofstream(folder / "scheduler_config.json") << R"({"beta_start": 0.1})";
  EXPECT_ERROR_CONTAINS(load_scheduler(folder), "missing '_class_name'");
  EXPECT_ERROR_CONTAINS(load_scheduler(folder / "absent"), "cannot open");
}

TEST(SchedulerRegistry, UnknownKeysAreIgnoredAndKept) {
  const json config = {{"_class_name", "PNDMScheduler"},  // ignored in favour of the name asked for
                       {"beta_schedule", "scaled_linear"},
                       {"some_future_key", {1, 2, 3}},
                       {"steps_offset", 1}};
  const std::unique_ptr<Scheduler> scheduler = make_scheduler("DDIMScheduler", config);
  EXPECT_EQ(scheduler->class_name(), "DDIMScheduler");
  EXPECT_EQ(scheduler->config().at("_class_name"), "DDIMScheduler");
  EXPECT_EQ(scheduler->config().at("some_future_key"), json({1, 2, 3}));
  EXPECT_EQ(scheduler->config().at("beta_schedule"), "scaled_linear");
  EXPECT_EQ(scheduler->config().at("clip_sample"), true);  // DDIM's default, listed as one
  const auto defaults = scheduler->config().at("_use_default_values").get<std::set<std::string>>();
  EXPECT_TRUE(defaults.count("clip_sample"));
  EXPECT_FALSE(defaults.count("steps_offset"));
  EXPECT_EQ(dynamic_cast<const DDIMScheduler&>(*scheduler).config().steps_offset, 1);
  // A key of the wrong type is an error naming it.
  EXPECT_ERROR_CONTAINS(make_scheduler("ddim", json{{"steps_offset", "1"}}), "key 'steps_offset' should be an integer");
  EXPECT_ERROR_CONTAINS(make_scheduler("euler", json{{"timestep_spacing", "sideways"}}),
                        "key 'timestep_spacing' is 'sideways'; expected one of");
  EXPECT_ERROR_CONTAINS(make_scheduler("pndm", json{{"beta_schedule", "sigmoid"}}), "beta_schedule 'sigmoid'");
  EXPECT_ERROR_CONTAINS(make_scheduler("ddim", json::array()), "JSON object");
}

TEST(SchedulerRegistry, RegisterAndClone) {
  register_scheduler("MyDDIMScheduler", [](const json& config) -> std::unique_ptr<Scheduler> {
    return std::make_unique<DDIMScheduler>(DDIMScheduler::from_config(config));
  });
  const std::vector<std::string> names = scheduler_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "MyDDIMScheduler"), names.end());
  EXPECT_EQ(make_scheduler("MyDDIMScheduler", json::object())->class_name(), "DDIMScheduler");
  EXPECT_ERROR_CONTAINS(register_scheduler("", nullptr), "empty");

  // A clone keeps its own step state.
  std::unique_ptr<Scheduler> euler = make_scheduler("euler", json::object());
  euler->set_timesteps(3);
  const std::vector<double> t = values(euler->timesteps());
  const at::Tensor x = random_latents(1), eps = random_latents(2);
  const at::Tensor first = euler->step(eps, t[0], x);
  std::unique_ptr<Scheduler> copy = euler->clone();
  const at::Tensor second = euler->step(eps, t[1], first);
  EXPECT_TRUE(copy->step(eps, t[1], first).equal(second));
  // The first call finds its step from the timestep; one not in the schedule is refused.
  std::unique_ptr<Scheduler> fresh = make_scheduler("euler", json::object());
  fresh->set_timesteps(3);
  EXPECT_ERROR_CONTAINS(fresh->step(eps, 12345.0, x), "is not in the schedule");
}

TEST(SchedulerRegistry, RefusedOptions) {
  EXPECT_ERROR_CONTAINS(make_scheduler("ddim", json::object())->set_timesteps(4, {.sigmas = std::vector<double>{1}}),
                        "takes no sigmas");
  EXPECT_ERROR_CONTAINS(make_scheduler("pndm", json::object())->set_timesteps(4, {.mu = 0.5}), "takes no mu");
  EXPECT_ERROR_CONTAINS(make_scheduler("ddim", json::object())->set_timesteps(1001), "more than");
  EXPECT_ERROR_CONTAINS(make_scheduler("euler", json{{"use_beta_sigmas", true}}), "use_beta_sigmas");
  EXPECT_ERROR_CONTAINS(make_scheduler("euler_a", json{{"prediction_type", "sample"}}), "'sample'");
  EXPECT_ERROR_CONTAINS(make_scheduler("ddim", json::object())->step(random_latents(1), 1, random_latents(1)),
                        "set_timesteps");
  std::unique_ptr<Scheduler> ddim = make_scheduler("ddim", json::object());
  ddim->set_timesteps(4);
  EXPECT_ERROR_CONTAINS(ddim->step(random_latents(1), 1.5, random_latents(1)), "not a training step");
}

// ---- the shared pieces ------------------------------------------------------------------------------

TEST(ScheduleMath, NumpyRoutines) {
  // ceil((stop - start) / step) values: 1000 / (1000 / 61) rounds to just above 61, so numpy (and
  // diffusers' "trailing" spacing) gives 62.
  EXPECT_EQ(numpy_arange(1000, 0, -1000.0 / 3).size(), 3u);
  EXPECT_EQ(numpy_arange(1000, 0, -1000.0 / 61).size(), 62u);
  EXPECT_EQ(numpy_arange(1000, 0, -250), (std::vector<double>{1000, 750, 500, 250}));
  EXPECT_TRUE(numpy_arange(0, 10, -1).empty());
  EXPECT_EQ(numpy_interp({-1, 0, 0.25, 2, 5}, {0, 1, 2}, {10, 20, 40}), (std::vector<double>{10, 10, 12.5, 40, 40}));
  EXPECT_EQ(numpy_round(2.5), 2);
  EXPECT_EQ(numpy_round(3.5), 4);
  EXPECT_EQ(numpy_round(-0.5), -0.0);
  EXPECT_EQ(spaced_timesteps("trailing", 1000, 4, 0, "x"), (std::vector<double>{999, 749, 499, 249}));
  EXPECT_EQ(spaced_timesteps("leading", 1000, 4, 1, "x"), (std::vector<double>{751, 501, 251, 1}));
  EXPECT_ERROR_CONTAINS(spaced_timesteps("sideways", 1000, 4, 0, "DDIMScheduler"), "timestep_spacing 'sideways'");
}

TEST(ScheduleMath, BetaSchedules) {
  BetaScheduleConfig linear;
  EXPECT_EQ(make_betas(linear, "x").scalar_type(), at::kFloat);
  EXPECT_FLOAT_EQ(make_betas(linear, "x")[0].item<float>(), 0.0001f);
  EXPECT_FLOAT_EQ(make_betas(linear, "x")[-1].item<float>(), 0.02f);
  BetaScheduleConfig cosine;
  cosine.beta_schedule = "squaredcos_cap_v2";
  const at::Tensor betas = make_betas(cosine, "x");
  EXPECT_EQ(betas.size(0), 1000);
  EXPECT_FLOAT_EQ(betas[-1].item<float>(), 0.999f);  // capped at max_beta
  BetaScheduleConfig trained;
  trained.trained_betas = std::vector<double>{0.1, 0.2, 0.3};
  EXPECT_TRUE(make_betas(trained, "x").equal(at::tensor({0.1f, 0.2f, 0.3f})));
  // Zero terminal SNR: the last alpha product is 0, the first unchanged.
  const at::Tensor rescaled = alphas_cumprod_of(rescale_zero_terminal_snr(make_betas(linear, "x")));
  EXPECT_EQ(rescaled[-1].item<float>(), 0.0f);
  EXPECT_NEAR(rescaled[0].item<float>(), alphas_cumprod_of(make_betas(linear, "x"))[0].item<float>(), 1e-6);
}

TEST(ScheduleMath, PythonJsonNonFiniteNumbers) {
  // Python's json writes -Infinity (DPMSolverMultistepScheduler's lambda_min_clipped), NaN, Infinity.
  const JsonConfig config = JsonConfig::parse(
      R"({"lambda_min_clipped": -Infinity, "a": NaN, "b": [Infinity], "c": "NaN -Infinity", "d": 1})", "config.json");
  EXPECT_EQ(config.get_double("lambda_min_clipped", 0), -std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(config.get_double("a", 0)));
  EXPECT_EQ(config.json().at("b")[0].get<double>(), std::numeric_limits<double>::infinity());
  EXPECT_EQ(config.get_string("c", ""), "NaN -Infinity");
  EXPECT_THROW(JsonConfig::parse(R"({"a": Infinit})", "config.json"), Error);
}
