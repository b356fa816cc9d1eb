// FlowMatchEulerDiscreteScheduler against diffusers: the tiny FLUX call's timesteps, sigmas and first
// step from the fixtures, and every schedule option against values that diffusers' set_timesteps
// arithmetic gives (computed with numpy under NEP 50 promotion, as numpy 2 does), compared bit for bit.

#include <cstdio>
#include <fstream>

#include "diffuse/error.hpp"
#include "diffuse/pipelines/flux_latents.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"
#include "support/test_support.hpp"

using namespace diffuse;

namespace {

using Config = FlowMatchEulerDiscreteSchedulerConfig;

void expect_values(const at::Tensor& actual, const std::vector<float>& expected, const char* what) {
  ASSERT_EQ(actual.scalar_type(), at::kFloat) << what;
  ASSERT_EQ(actual.numel(), static_cast<int64_t>(expected.size())) << what;
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_EQ(actual[static_cast<int64_t>(i)].item<float>(), expected[i]) << what << "[" << i << "]";
}

Config flux_dev_config() {
  Config c;
  c.shift = 3.0;
  c.use_dynamic_shifting = true;
  return c;
}

}  // namespace

TEST(FlowMatchEulerDiscreteScheduler, TinyFluxTimestepsAndSigmasMatchDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& ref = test::tiny_flux_reference();
  auto scheduler = FlowMatchEulerDiscreteScheduler::from_pretrained(test::tiny_flux_pipeline() / "scheduler");
  const auto& c = scheduler.config();
  EXPECT_TRUE(c.use_dynamic_shifting);
  const int64_t seq_len = flux_image_seq_len(64, 96, 8);
  ASSERT_EQ(seq_len, 24);
  const double mu = calculate_shift(seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift);
  scheduler.set_timesteps(4, mu, flux_sigmas(4));
  EXPECT_EQ(scheduler.num_inference_steps(), 4);
  EXPECT_TENSORS_CLOSE(scheduler.timesteps(), ref.load("timesteps"), 1e-4);
  EXPECT_TENSORS_CLOSE(scheduler.sigmas(), ref.load("sigmas"), 1e-4);
  test::print_error("timesteps", scheduler.timesteps(), ref.load("timesteps"));
  test::print_error("sigmas", scheduler.sigmas(), ref.load("sigmas"));
  EXPECT_TRUE(scheduler.timesteps().equal(ref.load("timesteps")));
  EXPECT_TRUE(scheduler.sigmas().equal(ref.load("sigmas")));
  // The transformer gets timestep / 1000.
  EXPECT_EQ(scheduler.timesteps()[0].item<float>() / 1000.0f, ref.load("transformer_timestep_step0")[0].item<float>());
}

TEST(FlowMatchEulerDiscreteScheduler, FirstStepMatchesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  const auto& ref = test::tiny_flux_reference();
  auto scheduler = FlowMatchEulerDiscreteScheduler::from_pretrained(test::tiny_flux_pipeline() / "scheduler");
  scheduler.set_timesteps(4, calculate_shift(24), flux_sigmas(4));
  const c10::Device device = test::test_device();
  at::Tensor next = scheduler.step(ref.load("transformer_out_step0", at::kFloat, device), 0,
                                   ref.load("latents_init", at::kFloat, device));
  EXPECT_EQ(next.scalar_type(), at::kFloat);
  EXPECT_EQ(next.device(), device);
  EXPECT_TENSORS_CLOSE(next, ref.load("latents_after_step_0"), 1e-4);
  test::print_error("step 0 vs latents_after_step_0", next, ref.load("latents_after_step_0"));
  const double timestep = scheduler.timesteps()[0].item<float>();
  EXPECT_EQ(scheduler.index_for_timestep(timestep), 0);
}

TEST(FlowMatchEulerDiscreteScheduler, CalculateShiftIsFluxPipelines) {
  EXPECT_DOUBLE_EQ(calculate_shift(256), 0.5);
  EXPECT_DOUBLE_EQ(calculate_shift(4096), 1.15);
  EXPECT_EQ(calculate_shift(24), 0.4607291666666667);
  EXPECT_THROW(calculate_shift(24, 256, 256), Error);
}

TEST(FlowMatchEulerDiscreteScheduler, LinspaceIsNumpys) {
  const std::vector<double> expected = {1.0,
                                        0.8571428571428571,
                                        0.7142857142857142,
                                        0.5714285714285714,
                                        0.4285714285714285,
                                        0.2857142857142856,
                                        0.14285714285714285};
  EXPECT_EQ(flux_sigmas(7), expected);
  EXPECT_EQ(numpy_linspace(0.3, 0.3, 3), (std::vector<double>{0.3, 0.3, 0.3}));
  EXPECT_EQ(numpy_linspace(2.0, 5.0, 1), (std::vector<double>{2.0}));
  EXPECT_TRUE(numpy_linspace(2.0, 5.0, 0).empty());
}

TEST(FlowMatchEulerDiscreteScheduler, StaticShiftDefaultSchedule) {
  Config c;
  c.shift = 3.0;
  FlowMatchEulerDiscreteScheduler scheduler(c);
  // Before set_timesteps: the shifted training schedule, 1000 entries.
  EXPECT_EQ(scheduler.timesteps().numel(), 1000);
  scheduler.set_timesteps(5);
  // diffusers shifts the training schedule's end points and then the inference schedule again.
  expect_values(scheduler.timesteps(),
                {1000.0f, 900.3590698242188f, 751.12109375f, 502.98504638671875f, 8.928571701049805f}, "timesteps");
  expect_values(scheduler.sigmas(),
                {1.0f, 0.9003590941429138f, 0.7511211037635803f, 0.5029850602149963f, 0.008928571827709675f, 0.0f},
                "sigmas");
}

TEST(FlowMatchEulerDiscreteScheduler, NoShiftDefaultSchedule) {
  FlowMatchEulerDiscreteScheduler scheduler{Config{}};
  scheduler.set_timesteps(4, /*mu=*/7.0);  // mu is ignored without dynamic shifting
  expect_values(scheduler.timesteps(), {1000.0f, 667.0f, 334.0f, 1.0f}, "timesteps");
  expect_values(scheduler.sigmas(), {1.0f, 0.6669999957084656f, 0.33399999141693115f, 0.0010000000474974513f, 0.0f},
                "sigmas");
}

TEST(FlowMatchEulerDiscreteScheduler, DynamicDefaultSchedule) {
  Config c;
  c.use_dynamic_shifting = true;
  FlowMatchEulerDiscreteScheduler scheduler(c);
  scheduler.set_timesteps(4, 1.15);
  expect_values(scheduler.sigmas(), {1.0f, 0.8634974360466003f, 0.6129788756370544f, 0.0031513916328549385f, 0.0f},
                "sigmas");
}

TEST(FlowMatchEulerDiscreteScheduler, LinearTimeShift) {
  Config c = flux_dev_config();
  c.time_shift_type = "linear";
  FlowMatchEulerDiscreteScheduler scheduler(c);
  scheduler.set_timesteps(6, 0.8, flux_sigmas(6));
  expect_values(scheduler.timesteps(),
                {1000.0f, 800.0f, 615.3846435546875f, 444.4444885253906f, 285.71429443359375f, 137.9310302734375f},
                "timesteps");
  expect_values(scheduler.sigmas(),
                {1.0f, 0.800000011920929f, 0.6153846383094788f, 0.444444477558136f, 0.2857142984867096f,
                 0.13793103396892548f, 0.0f},
                "sigmas");
}

TEST(FlowMatchEulerDiscreteScheduler, ShiftTerminal) {
  Config c = flux_dev_config();
  c.shift_terminal = 0.1;
  FlowMatchEulerDiscreteScheduler scheduler(c);
  scheduler.set_timesteps(5, 1.0, flux_sigmas(5));
  expect_values(scheduler.sigmas(),
                {1.0f, 0.8726861476898193f, 0.7022873163223267f, 0.46247774362564087f, 0.10000002384185791f, 0.0f},
                "sigmas");
}

TEST(FlowMatchEulerDiscreteScheduler, KarrasSigmas) {
  Config c;
  c.shift = 3.0;
  c.use_karras_sigmas = true;
  FlowMatchEulerDiscreteScheduler scheduler(c);
  scheduler.set_timesteps(5);
  expect_values(scheduler.sigmas(),
                {1.0f, 0.4003215432167053f, 0.13959911465644836f, 0.040372706949710846f, 0.008928571827709675f, 0.0f},
                "sigmas");
}

TEST(FlowMatchEulerDiscreteScheduler, ExponentialSigmas) {
  Config c = flux_dev_config();
  c.use_exponential_sigmas = true;
  FlowMatchEulerDiscreteScheduler scheduler(c);
  scheduler.set_timesteps(5, 0.7, flux_sigmas(5));
  expect_values(scheduler.sigmas(),
                {1.0f, 0.7607030272483826f, 0.5786690711975098f, 0.44019532203674316f, 0.33485791087150574f, 0.0f},
                "sigmas");
}

TEST(FlowMatchEulerDiscreteScheduler, InvertSigmas) {
  Config c;
  c.shift = 2.0;
  c.invert_sigmas = true;
  FlowMatchEulerDiscreteScheduler scheduler(c);
  scheduler.set_timesteps(3);
  expect_values(scheduler.timesteps(), {0.0f, 332.4459228515625f, 996.011962890625f}, "timesteps");
  expect_values(scheduler.sigmas(), {0.0f, 0.3324459195137024f, 0.9960119724273682f, 1.0f}, "sigmas");
}

TEST(FlowMatchEulerDiscreteScheduler, StepAddsInFloat32AndKeepsTheModelDtype) {
  FlowMatchEulerDiscreteScheduler scheduler(flux_dev_config());
  scheduler.set_timesteps(4, 0.5, flux_sigmas(4));
  at::Tensor sample = at::randn({1, 24, 16}).to(at::kBFloat16);
  at::Tensor velocity = at::randn({1, 24, 16}).to(at::kBFloat16);
  at::Tensor next = scheduler.step(velocity, 2, sample);
  EXPECT_EQ(next.scalar_type(), at::kBFloat16);
  const at::Tensor dt = scheduler.sigmas()[3] - scheduler.sigmas()[2];
  at::Tensor expected = (sample.to(at::kFloat) + dt * velocity).to(at::kBFloat16);
  EXPECT_TRUE(next.equal(expected));
  // The last step lands on sigma 0: the sample minus sigma times the velocity.
  at::Tensor last = scheduler.step(velocity.to(at::kFloat), 3, sample.to(at::kFloat));
  at::Tensor x0 = sample.to(at::kFloat) - scheduler.sigmas()[3].item<float>() * velocity.to(at::kFloat);
  EXPECT_TENSORS_CLOSE(last, x0, 1e-6);
}

TEST(FlowMatchEulerDiscreteScheduler, StochasticSamplingRenoisesX0) {
  Config c = flux_dev_config();
  c.stochastic_sampling = true;
  FlowMatchEulerDiscreteScheduler scheduler(c);
  scheduler.set_timesteps(4, 0.5, flux_sigmas(4));
  at::Tensor sample = at::randn({2, 8, 4}), velocity = at::randn({2, 8, 4});
  at::Tensor a = scheduler.step(velocity, 1, sample, cpu_generator(3));
  at::Tensor b = scheduler.step(velocity, 1, sample, cpu_generator(3));
  EXPECT_TRUE(a.equal(b));
  const float sigma = scheduler.sigmas()[1].item<float>(), next = scheduler.sigmas()[2].item<float>();
  at::Tensor noise = at::randn({2, 8, 4}, cpu_generator(3), at::kFloat);
  at::Tensor expected = (1.0f - next) * (sample - sigma * velocity) + next * noise;
  EXPECT_TENSORS_CLOSE(a, expected, 1e-6);
}

TEST(FlowMatchEulerDiscreteScheduler, IndexForTimestep) {
  Config c;
  FlowMatchEulerDiscreteScheduler scheduler(c);
  scheduler.set_timesteps(3, std::nullopt, std::vector<double>{0.5, 0.5, 0.25});
  EXPECT_EQ(scheduler.index_for_timestep(500.0), 1);  // the second of two, as diffusers picks
  EXPECT_EQ(scheduler.index_for_timestep(250.0), 2);
  EXPECT_THROW(scheduler.index_for_timestep(123.0), Error);
}

TEST(FlowMatchEulerDiscreteScheduler, Errors) {
  Config unknown_shift;
  unknown_shift.time_shift_type = "cosine";
  try {
    FlowMatchEulerDiscreteScheduler scheduler(unknown_shift);
    FAIL() << "expected an error for time_shift_type";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cosine"), std::string::npos) << e.what();
  }
  // The same from a config file, naming the file.
  const auto folder = test::temporary_folder("scheduler_bad_shift");
  std::ofstream(folder / "scheduler_config.json") << R"({"_class_name": "FlowMatchEulerDiscreteScheduler",
      "use_dynamic_shifting": true, "time_shift_type": "cosine"})";
  try {
    FlowMatchEulerDiscreteScheduler::from_pretrained(folder);
    FAIL() << "expected an error for time_shift_type";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("scheduler_config.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(FlowMatchEulerDiscreteScheduler::from_pretrained(folder / "absent"), Error);

  Config beta;
  beta.use_beta_sigmas = true;
  EXPECT_THROW(FlowMatchEulerDiscreteScheduler{beta}, Error);
  Config two;
  two.use_karras_sigmas = two.use_exponential_sigmas = true;
  EXPECT_THROW(FlowMatchEulerDiscreteScheduler{two}, Error);

  FlowMatchEulerDiscreteScheduler dynamic(flux_dev_config());
  EXPECT_THROW(dynamic.set_timesteps(4), Error);                       // no mu
  EXPECT_THROW(dynamic.set_timesteps(4, 0.5, flux_sigmas(3)), Error);  // 3 sigmas for 4 steps
  EXPECT_THROW(dynamic.set_timesteps(0, 0.5), Error);
  dynamic.set_timesteps(4, 0.5, flux_sigmas(4));
  at::Tensor x = at::zeros({1, 4, 4});
  EXPECT_THROW(dynamic.step(x, 4, x), Error);  // 4 steps: indices 0..3
  EXPECT_THROW(dynamic.step(x, -1, x), Error);
  EXPECT_THROW(dynamic.step(at::zeros({1, 4, 5}), 0, x), Error);
}
