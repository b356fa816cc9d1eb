#pragma once
// What the tests share: where the reference fixtures are, and how tensors are compared with them.

#include <ATen/ATen.h>
#include <c10/core/Device.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "diffuse/io/safetensors.hpp"
#include "diffuse/pipelines/generate_request.hpp"

namespace diffuse::test {

// ../shared/fixtures beside the checkout (or $DIFFUSE_FIXTURES); nullopt when absent.
std::optional<std::filesystem::path> fixtures_dir();
// fixtures_dir()/tiny-flux/pipeline; call only after DIFFUSE_REQUIRE_FIXTURES().
std::filesystem::path tiny_flux_pipeline();
// The reference tensors made by diffusers for the tiny-flux call.
const SafetensorsFile& tiny_flux_reference();
// The reference call (tiny-flux/reference.json's arguments) as a request, output_type Tensor, no
// progress bar.
GenerateRequest reference_request();
// The same for any fixture folder's reference.json ("tiny-sd", "tiny-qwenimage"): prompts, negative
// prompts, size, steps, guidance_scale or true_cfg_scale, max_sequence_length and seed, as given.
GenerateRequest fixture_request(const std::string& fixture);
// A fresh empty folder under the build tree for one test's files.
std::filesystem::path temporary_folder(const std::string& name);

// Where parity tests run their models: $DIFFUSE_TEST_DEVICE ("cuda" on the GPU machine), else the CPU.
c10::Device test_device();

// max|actual - expected| / max|expected|, in float64, after moving both to the CPU.
double relative_error(const at::Tensor& actual, const at::Tensor& expected);

// The message of the diffuse::Error that `call` throws, or "(no error)".
std::string error_of(const std::function<void()>& call);

// Prints "[ measured ] what: max|a-b|/max|b| = ... (bitwise equal: yes|no)" and returns the error.
double print_error(const char* what, const at::Tensor& actual, const at::Tensor& expected);

// Asserts shapes equal and relative_error <= tolerance, printing both values on failure.
::testing::AssertionResult tensors_close(const at::Tensor& actual, const at::Tensor& expected, double tolerance);

}  // namespace diffuse::test

#define DIFFUSE_REQUIRE_FIXTURES()                                                          \
  do {                                                                                      \
    if (!::diffuse::test::fixtures_dir())                                                   \
      GTEST_SKIP() << "reference fixtures not found at " DIFFUSE_FIXTURES_DIR               \
                      " (set DIFFUSE_FIXTURES to their folder); skipping";                  \
  } while (0)

#define EXPECT_TENSORS_CLOSE(actual, expected, tolerance) \
  EXPECT_TRUE(::diffuse::test::tensors_close((actual), (expected), (tolerance)))

#define EXPECT_ERROR_CONTAINS(call, part)                                      \
  do {                                                                         \
    const std::string message_ = ::diffuse::test::error_of([&] { call; });     \
    EXPECT_NE(message_.find(part), std::string::npos) << message_;             \
  } while (0)
