#include "support/test_support.hpp"

#include "diffuse/error.hpp"
#include "diffuse/io/json_config.hpp"

#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace diffuse::test {

std::optional<std::filesystem::path> fixtures_dir() {
  std::filesystem::path dir = DIFFUSE_FIXTURES_DIR;
  if (const char* env = std::getenv("DIFFUSE_FIXTURES"); env != nullptr && *env != '\0') dir = env;
  if (!std::filesystem::exists(dir / "tiny-flux" / "reference.safetensors")) return std::nullopt;
  return dir;
}

std::filesystem::path tiny_flux_pipeline() { return *fixtures_dir() / "tiny-flux" / "pipeline"; }

const SafetensorsFile& tiny_flux_reference() {
  static const SafetensorsFile reference(*fixtures_dir() / "tiny-flux" / "reference.safetensors");
  return reference;
}

GenerateRequest reference_request() {
  const JsonConfig args = JsonConfig::load(*fixtures_dir() / "tiny-flux" / "reference.json");
  GenerateRequest request;
  request.prompt = args.get_string_list("prompts", {});
  request.height = args.get_int("height", 0);
  request.width = args.get_int("width", 0);
  request.num_inference_steps = args.get_int("num_inference_steps", 0);
  request.guidance_scale = args.get_double("guidance_scale", 0);
  request.max_sequence_length = args.get_int("max_sequence_length", 0);
  request.seed = static_cast<uint64_t>(args.get_int("seed", 0));
  request.output_type = OutputType::Tensor;
  request.progress = false;
  return request;
}

GenerateRequest fixture_request(const std::string& fixture) {
  const JsonConfig args = JsonConfig::load(*fixtures_dir() / fixture / "reference.json");
  GenerateRequest request;
  request.prompt = args.get_string_list("prompts", {});
  if (args.has("negative_prompts")) request.negative_prompt = args.get_string_list("negative_prompts", {});
  request.height = args.get_int("height", 0);
  request.width = args.get_int("width", 0);
  request.num_inference_steps = args.get_int("num_inference_steps", 0);
  request.guidance_scale = args.get_optional_double("guidance_scale");
  request.true_cfg_scale = args.get_optional_double("true_cfg_scale");
  if (args.has("max_sequence_length")) request.max_sequence_length = args.get_int("max_sequence_length", 0);
  request.seed = static_cast<uint64_t>(args.get_int("seed", 0));
  request.output_type = OutputType::Tensor;
  request.progress = false;
  return request;
}

std::filesystem::path temporary_folder(const std::string& name) {
  std::filesystem::path dir = std::filesystem::path(DIFFUSE_TEST_BINARY_DIR) / "tmp" / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

c10::Device test_device() {
  const char* env = std::getenv("DIFFUSE_TEST_DEVICE");
  c10::Device device(env != nullptr && *env != '\0' ? env : "cpu");
  // "cuda" means the current GPU; name it, so that it compares equal to a tensor's device.
  if (device.is_cuda() && !device.has_index()) device = c10::Device(c10::kCUDA, 0);
  // The references are IEEE float32; PyTorch's CUDA default runs cuDNN convolutions in TF32, which
  // alone misses 1e-4. Parity tests compare arithmetic, so TF32 is off for them.
  if (device.is_cuda()) {
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  return device;
}

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  at::Tensor a = actual.detach().to(at::kCPU, at::kDouble);
  at::Tensor b = expected.detach().to(at::kCPU, at::kDouble);
  const double scale = b.abs().max().item<double>();
  const double diff = (a - b).abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}

double print_error(const char* what, const at::Tensor& actual, const at::Tensor& expected) {
  const double error = relative_error(actual, expected);
  std::printf("[ measured ] %s: max|a-b|/max|b| = %.3e (bitwise equal: %s)\n", what, error,
              actual.cpu().equal(expected.cpu()) ? "yes" : "no");
  return error;
}

::testing::AssertionResult tensors_close(const at::Tensor& actual, const at::Tensor& expected, double tolerance) {
  if (actual.sizes() != expected.sizes()) {
    std::ostringstream out;
    out << "shape " << actual.sizes() << " != expected " << expected.sizes();
    return ::testing::AssertionFailure() << out.str();
  }
  const double error = relative_error(actual, expected);
  if (error <= tolerance) return ::testing::AssertionSuccess();
  std::ostringstream out;
  out << "max|a-b|/max|b| = " << error << " > " << tolerance << "\nactual (first values): "
      << actual.detach().flatten().slice(0, 0, 8) << "\nexpected: " << expected.detach().flatten().slice(0, 0, 8);
  return ::testing::AssertionFailure() << out.str();
}

}  // namespace diffuse::test
