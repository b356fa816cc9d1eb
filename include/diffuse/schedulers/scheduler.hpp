#pragma once
// TEMPORARY stand-in for the scheduler interface being written on branch `sched`; replaced at merge.
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>
namespace diffuse {
struct TimestepOptions {
  std::optional<double> mu;
  std::optional<std::vector<double>> sigmas;
};
class Scheduler {
 public:
  virtual ~Scheduler() = default;
  virtual std::string class_name() const = 0;
  virtual void set_timesteps(int64_t num_inference_steps, const TimestepOptions& options = {}) = 0;
  virtual const at::Tensor& timesteps() const = 0;
  virtual double init_noise_sigma() const = 0;
  virtual at::Tensor scale_model_input(const at::Tensor& sample, double timestep) = 0;
  virtual at::Tensor step(const at::Tensor& model_output, double timestep, const at::Tensor& sample,
                          std::optional<at::Generator> generator = std::nullopt) = 0;
  virtual int64_t order() const = 0;
  virtual std::unique_ptr<Scheduler> clone() const = 0;
  const nlohmann::json& config() const { return config_; }
 protected:
  nlohmann::json config_;
};
std::unique_ptr<Scheduler> make_scheduler(const std::string& class_name_or_alias, const nlohmann::json& config);
std::unique_ptr<Scheduler> load_scheduler(const std::filesystem::path& folder);
std::vector<std::string> scheduler_names();
}  // namespace diffuse
