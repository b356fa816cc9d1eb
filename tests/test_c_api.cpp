// The C API (include/diffuse/c_api.h) against the C++ API on the tiny-flux fixture: the same latents
// and images, from one thread and from several (own pipelines, and one shared pipeline), caller-owned
// buffers, the staged path, cancel, the log callback, every error path, and the C example program.
// Then every family through the C API (tiny-sd and tiny-qwenimage against their references: info,
// negative prompts, true CFG, a swapped scheduler, embeddings with masks), and each error status from
// a real fault (missing folder, truncated checkpoint, a request too big for the CPU, a bad argument,
// a cancel).
// scripts/test.sh also runs this program under AddressSanitizer with leak detection.

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sys/wait.h>
#include <thread>

#include <nlohmann/json.hpp>

#include "diffuse/c_api.h"
#include "diffuse/io/image.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/pipelines/flux_pipeline.hpp"
#include "diffuse/version.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

// ---- the reference call, in both APIs -------------------------------------------------------------

struct ReferenceCall {
  std::vector<std::string> prompts;
  int64_t height, width, steps, max_sequence_length;
  double guidance;
  uint64_t seed;
};

const ReferenceCall& reference_call() {
  static const ReferenceCall call = [] {
    const JsonConfig args = JsonConfig::load(*test::fixtures_dir() / "tiny-flux" / "reference.json");
    return ReferenceCall{args.get_string_list("prompts", {}), args.get_int("height", 0), args.get_int("width", 0),
                         args.get_int("num_inference_steps", 0), args.get_int("max_sequence_length", 0),
                         args.get_double("guidance_scale", 0), static_cast<uint64_t>(args.get_int("seed", 0))};
  }();
  return call;
}

GenerateRequest cpp_request() {
  const ReferenceCall& call = reference_call();
  GenerateRequest request;
  request.prompt = call.prompts;
  request.height = call.height;
  request.width = call.width;
  request.num_inference_steps = call.steps;
  request.guidance_scale = call.guidance;
  request.max_sequence_length = call.max_sequence_length;
  request.seed = call.seed;
  request.output_type = OutputType::Image;
  request.progress = false;
  return request;
}

FluxPipeline cpp_pipeline(FluxPipelineOptions options = {}) {
  options.device = test::test_device().str();
  return FluxPipeline::from_pretrained(test::tiny_flux_pipeline(), std::move(options));
}

// The C++ API's output for the reference call, computed once.
const GenerateOutput& cpp_output() {
  static const GenerateOutput out = cpp_pipeline().generate(cpp_request());
  return out;
}

// The same call as a C request. Holds the prompt pointers the request points at.
struct CRequest {
  CRequest() {
    const ReferenceCall& call = reference_call();
    for (const std::string& prompt : call.prompts) prompts.push_back(prompt.c_str());
    diffuse_generate_request_init(&request);
    request.prompts = prompts.data();
    request.prompt_count = prompts.size();
    request.height = call.height;
    request.width = call.width;
    request.num_inference_steps = call.steps;
    request.guidance_scale = call.guidance;
    request.max_sequence_length = call.max_sequence_length;
    request.has_seed = 1;
    request.seed = call.seed;
  }
  CRequest(const CRequest&) = delete;
  std::vector<const char*> prompts;
  diffuse_generate_request request;
};

// Owners of the C handles, so that a failing assertion leaks nothing (the ASan run checks).
struct Pipeline {
  ~Pipeline() { diffuse_pipeline_free(handle); }
  diffuse_pipeline** out() {
    diffuse_pipeline_free(handle);
    handle = nullptr;
    return &handle;
  }
  diffuse_pipeline* handle = nullptr;
};
struct Result {
  ~Result() { diffuse_result_free(handle); }
  // Frees what it holds, for a call to fill again.
  diffuse_result** out() {
    diffuse_result_free(handle);
    handle = nullptr;
    return &handle;
  }
  diffuse_result* handle = nullptr;
};

const std::string& device_name() {
  static const std::string name = test::test_device().str();
  return name;
}

diffuse_status create(Pipeline& pipeline, const std::vector<const char*>& skip = {}) {
  diffuse_pipeline_options options;
  diffuse_pipeline_options_init(&options);
  options.device = device_name().c_str();
  options.skip = skip.data();
  options.skip_count = skip.size();
  return diffuse_pipeline_create(test::tiny_flux_pipeline().c_str(), &options, pipeline.out());
}

// A copy of one of a result's tensors.
at::Tensor tensor_of(const diffuse_result* result, diffuse_tensor_name name) {
  diffuse_tensor_view view;
  const diffuse_status status = diffuse_result_tensor(result, name, &view);
  EXPECT_EQ(status, DIFFUSE_OK) << diffuse_last_error();
  if (status != DIFFUSE_OK) return {};
  return at::from_blob(const_cast<float*>(view.data), at::IntArrayRef(view.shape, view.ndim), at::kFloat).clone();
}

std::vector<uint8_t> pixels_of(const diffuse_result* result, size_t index) {
  diffuse_image_view view;
  EXPECT_EQ(diffuse_result_image(result, index, &view), DIFFUSE_OK) << diffuse_last_error();
  return std::vector<uint8_t>(view.pixels, view.pixels + view.size);
}

// Bitwise, or within 1e-6 where threads may order a reduction differently.
// On the CPU the C and C++ paths give the same bits. On CUDA, cuDNN may choose another convolution
// algorithm from one call to the next, so they agree to float32 rounding (and pixels within a level).
double same_as_cpp_tolerance() { return test::test_device().is_cuda() ? 1e-5 : 1e-6; }

void expect_pixels_match(const std::vector<uint8_t>& actual, const std::vector<uint8_t>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  if (!test::test_device().is_cuda()) {
    EXPECT_EQ(actual, expected);
    return;
  }
  int worst = 0;
  for (size_t i = 0; i < actual.size(); ++i) worst = std::max(worst, std::abs(int(actual[i]) - int(expected[i])));
  EXPECT_LE(worst, 1) << "pixels differ by up to " << worst << " levels";
}

#define EXPECT_SAME_AS_CPP(what, actual, expected) \
  EXPECT_LE(test::print_error(what, (actual), (expected)), same_as_cpp_tolerance())

#define EXPECT_STATUS(call, status, part)                                                          \
  do {                                                                                             \
    const diffuse_status got_ = (call);                                                            \
    EXPECT_EQ(got_, status) << diffuse_status_name(got_) << ": " << diffuse_last_error();          \
    EXPECT_NE(std::string(diffuse_last_error()).find(part), std::string::npos) << diffuse_last_error(); \
  } while (0)

}  // namespace

// ---- versions, statuses ------------------------------------------------------------------------------

TEST(CApi, VersionAndStatusNames) {
  EXPECT_STREQ(diffuse_version(), DIFFUSE_VERSION_STRING);
  int major = -1, minor = -1, patch = -1;
  diffuse_version_numbers(&major, &minor, &patch);
  EXPECT_EQ(major, DIFFUSE_VERSION_MAJOR);
  EXPECT_EQ(minor, DIFFUSE_VERSION_MINOR);
  EXPECT_EQ(patch, DIFFUSE_VERSION_PATCH);
  diffuse_version_numbers(nullptr, nullptr, nullptr);
  EXPECT_STREQ(diffuse_status_name(DIFFUSE_OK), "DIFFUSE_OK");
  EXPECT_STREQ(diffuse_status_name(DIFFUSE_ERROR_BUFFER_TOO_SMALL), "DIFFUSE_ERROR_BUFFER_TOO_SMALL");
  EXPECT_STREQ(diffuse_status_name(static_cast<diffuse_status>(99)), "DIFFUSE_ERROR_UNKNOWN");
}

// ---- same numbers as the C++ API ------------------------------------------------------------------------

TEST(CApi, GeneratesTheSameLatentsAndImagesAsTheCppApi) {
  DIFFUSE_REQUIRE_FIXTURES();
  Pipeline pipe;
  ASSERT_EQ(create(pipe), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_STREQ(diffuse_last_error(), "");

  diffuse_pipeline_info info;
  info.struct_size = sizeof info;
  ASSERT_EQ(diffuse_pipeline_get_info(pipe.handle, &info), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_EQ(info.vae_scale_factor, 8);
  EXPECT_EQ(info.num_channels_latents, 4);
  EXPECT_EQ(info.joint_attention_dim, 32);
  EXPECT_EQ(info.pooled_projection_dim, 32);
  EXPECT_EQ(info.default_height, 1024);
  EXPECT_EQ(info.guidance_embeds, 1);
  EXPECT_STREQ(info.dtype, "float32");
  EXPECT_EQ(std::string(info.device), device_name());

  // Each step's latents reach the callback (progress_latents) and match diffusers'.
  CRequest c;
  std::vector<at::Tensor> steps;
  c.request.progress_latents = 1;
  c.request.progress_user_data = &steps;
  c.request.progress = [](void* user_data, const diffuse_step_info* info) {
    auto& seen = *static_cast<std::vector<at::Tensor>*>(user_data);
    seen.push_back(at::from_blob(const_cast<float*>(info->latents), {info->latents_shape[0], info->latents_shape[1],
                                                                     info->latents_shape[2]}, at::kFloat).clone());
    EXPECT_EQ(info->step + 1, static_cast<int64_t>(seen.size()));
    EXPECT_EQ(info->num_steps, 4);
    return DIFFUSE_CONTINUE;
  };
  Result result;
  ASSERT_EQ(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_EQ(diffuse_result_interrupted(result.handle), 0);

  const GenerateOutput& cpp = cpp_output();
  EXPECT_SAME_AS_CPP("C vs C++ latents", tensor_of(result.handle, DIFFUSE_TENSOR_LATENTS), cpp.latents);
  EXPECT_SAME_AS_CPP("C vs C++ image tensor", tensor_of(result.handle, DIFFUSE_TENSOR_IMAGE), cpp.image_tensor);
  ASSERT_EQ(diffuse_result_image_count(result.handle), 1u);
  expect_pixels_match(pixels_of(result.handle, 0), cpp.images[0].pixels);
  diffuse_image_view image;
  ASSERT_EQ(diffuse_result_image(result.handle, 0, &image), DIFFUSE_OK);
  EXPECT_EQ(image.width, 96);
  EXPECT_EQ(image.height, 64);

  const SafetensorsFile& reference = test::tiny_flux_reference();
  ASSERT_EQ(steps.size(), 4u);
  for (size_t i = 0; i < steps.size(); ++i)
    EXPECT_TENSORS_CLOSE(steps[i], reference.load("latents_after_step_" + std::to_string(i)), 1e-4) << "step " << i;
  test::print_error("C latents vs diffusers", tensor_of(result.handle, DIFFUSE_TENSOR_LATENTS),
                    reference.load("latents_final"));
  EXPECT_TENSORS_CLOSE(tensor_of(result.handle, DIFFUSE_TENSOR_IMAGE), reference.load("pipeline_output_pt"), 1e-4);

  diffuse_times times;
  ASSERT_EQ(diffuse_result_times(result.handle, &times), DIFFUSE_OK);
  EXPECT_GT(times.total_seconds, 0);
  EXPECT_GE(times.total_seconds, times.denoise_seconds);
  diffuse_tensor_view view;
  EXPECT_STATUS(diffuse_result_tensor(result.handle, DIFFUSE_TENSOR_PROMPT_EMBEDS, &view), DIFFUSE_ERROR_NOT_FOUND,
                "no prompt_embeds");
  EXPECT_STATUS(diffuse_result_image(result.handle, 1, &image), DIFFUSE_ERROR_NOT_FOUND, "has 1 images");
}

TEST(CApi, CallerOwnedBuffersHoldWhatResultsHold) {
  DIFFUSE_REQUIRE_FIXTURES();
  Pipeline pipe;
  ASSERT_EQ(create(pipe), DIFFUSE_OK) << diffuse_last_error();
  CRequest c;
  diffuse_sizes sizes;
  diffuse_sizes_init(&sizes);
  ASSERT_EQ(diffuse_generate_sizes(pipe.handle, &c.request, &sizes), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_EQ(sizes.batch, 1);
  EXPECT_EQ(sizes.height, 64);
  EXPECT_EQ(sizes.width, 96);
  EXPECT_EQ(sizes.latent_tokens, 24);
  EXPECT_EQ(sizes.latent_channels, 16);
  EXPECT_EQ(sizes.sequence_length, 32);
  EXPECT_EQ(sizes.latents_count, 24u * 16u);
  EXPECT_EQ(sizes.image_bytes, 64u * 96u * 3u);
  EXPECT_EQ(sizes.image_tensor_count, 3u * 64u * 96u);

  std::vector<float> latents(sizes.latents_count, -7.f);
  std::vector<uint8_t> images(sizes.image_bytes);
  std::vector<float> image_tensor(sizes.image_tensor_count);
  diffuse_buffers buffers;
  diffuse_buffers_init(&buffers);
  buffers.latents = latents.data();
  buffers.latents_count = latents.size() - 1;  // one too few: refused before any work
  buffers.images = images.data();
  buffers.image_bytes = images.size();
  int steps_run = 0;
  c.request.progress_user_data = &steps_run;
  c.request.progress = [](void* user_data, const diffuse_step_info*) {
    ++*static_cast<int*>(user_data);
    return DIFFUSE_CONTINUE;
  };
  int interrupted = -1;
  EXPECT_STATUS(diffuse_generate_into(pipe.handle, &c.request, &buffers, &interrupted), DIFFUSE_ERROR_BUFFER_TOO_SMALL,
                "buffers->latents holds 383 floats but this call writes 384");
  EXPECT_EQ(steps_run, 0);
  EXPECT_EQ(latents.front(), -7.f);

  buffers.latents_count = latents.size();
  buffers.image_tensor = image_tensor.data();
  buffers.image_tensor_count = image_tensor.size();
  ASSERT_EQ(diffuse_generate_into(pipe.handle, &c.request, &buffers, &interrupted), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_EQ(interrupted, 0);
  EXPECT_EQ(steps_run, 4);
  const GenerateOutput& cpp = cpp_output();
  EXPECT_SAME_AS_CPP("C buffers vs C++ latents", at::from_blob(latents.data(), {1, 24, 16}), cpp.latents);
  EXPECT_SAME_AS_CPP("C buffers vs C++ image tensor", at::from_blob(image_tensor.data(), {1, 3, 64, 96}), cpp.image_tensor);
  expect_pixels_match(images, cpp.images[0].pixels);

  // Latent output: no images to write.
  c.request.output_type = DIFFUSE_OUTPUT_LATENT;
  ASSERT_EQ(diffuse_generate_sizes(pipe.handle, &c.request, &sizes), DIFFUSE_OK);
  EXPECT_EQ(sizes.image_bytes, 0u);
  EXPECT_EQ(sizes.image_tensor_count, 0u);
  EXPECT_STATUS(diffuse_generate_into(pipe.handle, &c.request, &buffers, nullptr), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "does not write buffers->images (the output type is latent)");
  buffers.images = nullptr;
  buffers.image_tensor = nullptr;
  std::fill(latents.begin(), latents.end(), 0.f);
  ASSERT_EQ(diffuse_generate_into(pipe.handle, &c.request, &buffers, nullptr), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_SAME_AS_CPP("C latent output vs C++ latents", at::from_blob(latents.data(), {1, 24, 16}), cpp.latents);
  buffers.latents = nullptr;
  EXPECT_STATUS(diffuse_generate_into(pipe.handle, &c.request, &buffers, nullptr), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "no output buffer");
}

TEST(CApi, StagedEncodeGenerateDecodeMatchesOneCall) {
  DIFFUSE_REQUIRE_FIXTURES();
  const ReferenceCall& call = reference_call();
  const SafetensorsFile& reference = test::tiny_flux_reference();
  const GenerateOutput& cpp = cpp_output();

  // Stage 1: the text encoders alone.
  Pipeline encoder;
  ASSERT_EQ(create(encoder, {"transformer", "vae"}), DIFFUSE_OK) << diffuse_last_error();
  int loaded = -1;
  ASSERT_EQ(diffuse_pipeline_has(encoder.handle, "transformer", &loaded), DIFFUSE_OK);
  EXPECT_EQ(loaded, 0);
  std::vector<const char*> prompts;
  for (const std::string& prompt : call.prompts) prompts.push_back(prompt.c_str());
  diffuse_encode_request encode;
  diffuse_encode_request_init(&encode);
  encode.prompts = prompts.data();
  encode.prompt_count = prompts.size();
  encode.max_sequence_length = call.max_sequence_length;
  Result embeddings;
  ASSERT_EQ(diffuse_encode(encoder.handle, &encode, embeddings.out()), DIFFUSE_OK) << diffuse_last_error();
  const at::Tensor prompt_embeds = tensor_of(embeddings.handle, DIFFUSE_TENSOR_PROMPT_EMBEDS);
  const at::Tensor pooled = tensor_of(embeddings.handle, DIFFUSE_TENSOR_POOLED_PROMPT_EMBEDS);
  EXPECT_TENSORS_CLOSE(prompt_embeds, reference.load("prompt_embeds"), 1e-4);
  EXPECT_TENSORS_CLOSE(pooled, reference.load("pooled_prompt_embeds"), 1e-4);
  PromptEmbeddings cpp_embeddings =
      cpp_pipeline({.skip = {"transformer", "vae"}}).encode_prompt({.prompt = call.prompts, .max_sequence_length = 32});
  EXPECT_SAME_AS_CPP("C vs C++ prompt_embeds", prompt_embeds, cpp_embeddings.prompt_embeds);
  EXPECT_SAME_AS_CPP("C vs C++ pooled_prompt_embeds", pooled, cpp_embeddings.pooled_prompt_embeds);

  // The same into caller buffers.
  diffuse_sizes sizes;
  diffuse_sizes_init(&sizes);
  ASSERT_EQ(diffuse_encode_sizes(encoder.handle, &encode, &sizes), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_EQ(sizes.prompt_embeds_count, 32u * 32u);
  EXPECT_EQ(sizes.pooled_prompt_embeds_count, 32u);
  std::vector<float> embeds(sizes.prompt_embeds_count), pooled_buffer(sizes.pooled_prompt_embeds_count);
  diffuse_buffers buffers;
  diffuse_buffers_init(&buffers);
  buffers.prompt_embeds = embeds.data();
  buffers.prompt_embeds_count = embeds.size();
  buffers.pooled_prompt_embeds = pooled_buffer.data();
  buffers.pooled_prompt_embeds_count = pooled_buffer.size();
  ASSERT_EQ(diffuse_encode_into(encoder.handle, &encode, &buffers), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_TRUE(at::equal(at::from_blob(embeds.data(), {1, 32, 32}), prompt_embeds));
  EXPECT_TRUE(at::equal(at::from_blob(pooled_buffer.data(), {1, 32}), pooled));
  ASSERT_EQ(diffuse_pipeline_release(encoder.handle, "text_encoder"), DIFFUSE_OK);
  EXPECT_STATUS(diffuse_encode(encoder.handle, &encode, embeddings.out()), DIFFUSE_ERROR_FAILED,
                "'text_encoder' is not loaded");
  EXPECT_EQ(embeddings.handle, nullptr);

  // Stage 2: the transformer alone, from the embeddings to latents.
  Pipeline denoiser;
  ASSERT_EQ(create(denoiser, {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"}), DIFFUSE_OK)
      << diffuse_last_error();
  CRequest c;
  c.request.prompts = nullptr;
  c.request.prompt_count = 0;
  c.request.prompt_embeds = embeds.data();
  c.request.pooled_prompt_embeds = pooled_buffer.data();
  c.request.embeds_batch = 1;
  c.request.embeds_sequence_length = 32;
  c.request.output_type = DIFFUSE_OUTPUT_LATENT;
  Result latents;
  ASSERT_EQ(diffuse_generate(denoiser.handle, &c.request, latents.out()), DIFFUSE_OK) << diffuse_last_error();
  const at::Tensor staged = tensor_of(latents.handle, DIFFUSE_TENSOR_LATENTS);
  EXPECT_SAME_AS_CPP("C staged vs C++ one-call latents", staged, cpp.latents);
  EXPECT_EQ(diffuse_result_image_count(latents.handle), 0u);
  diffuse_tensor_view view;
  EXPECT_STATUS(diffuse_result_tensor(latents.handle, DIFFUSE_TENSOR_IMAGE, &view), DIFFUSE_ERROR_NOT_FOUND,
                "no an image tensor");

  // Stage 3: the VAE alone.
  Pipeline decoder;
  ASSERT_EQ(create(decoder, {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer"}), DIFFUSE_OK)
      << diffuse_last_error();
  Result images;
  std::vector<float> packed(staged.data_ptr<float>(), staged.data_ptr<float>() + staged.numel());
  ASSERT_EQ(diffuse_decode(decoder.handle, packed.data(), packed.size(), 1, call.height, call.width, images.out()),
            DIFFUSE_OK)
      << diffuse_last_error();
  EXPECT_SAME_AS_CPP("C decode vs C++ image tensor", tensor_of(images.handle, DIFFUSE_TENSOR_IMAGE), cpp.image_tensor);
  expect_pixels_match(pixels_of(images.handle, 0), cpp.images[0].pixels);

  ASSERT_EQ(diffuse_decode_sizes(decoder.handle, 1, call.height, call.width, &sizes), DIFFUSE_OK);
  std::vector<uint8_t> pixels(sizes.image_bytes);
  diffuse_buffers_init(&buffers);
  buffers.images = pixels.data();
  buffers.image_bytes = pixels.size();
  ASSERT_EQ(diffuse_decode_into(decoder.handle, packed.data(), packed.size(), 1, call.height, call.width, &buffers),
            DIFFUSE_OK)
      << diffuse_last_error();
  expect_pixels_match(pixels, cpp.images[0].pixels);
  EXPECT_STATUS(diffuse_decode(decoder.handle, packed.data(), packed.size() - 1, 1, call.height, call.width, images.out()),
                DIFFUSE_ERROR_INVALID_ARGUMENT, "latents_count is 383");
  EXPECT_STATUS(diffuse_decode(decoder.handle, packed.data(), packed.size(), 1, 60, call.width, images.out()),
                DIFFUSE_ERROR_INVALID_ARGUMENT, "height 60 is not a multiple of 16");
}

// ---- threads ----------------------------------------------------------------------------------------------

TEST(CApiThreads, PipelinesOfTheirOwnRunConcurrently) {
  DIFFUSE_REQUIRE_FIXTURES();
  const GenerateOutput& cpp = cpp_output();
  constexpr int kThreads = 3;
  std::array<diffuse_status, kThreads> statuses{};
  std::array<std::string, kThreads> errors;
  std::array<at::Tensor, kThreads> latents, images;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Pipeline pipe;
      statuses[t] = create(pipe);
      if (statuses[t] == DIFFUSE_OK) {
        CRequest c;
        Result result;
        statuses[t] = diffuse_generate(pipe.handle, &c.request, result.out());
        if (statuses[t] == DIFFUSE_OK) {
          latents[t] = tensor_of(result.handle, DIFFUSE_TENSOR_LATENTS);
          images[t] = tensor_of(result.handle, DIFFUSE_TENSOR_IMAGE);
        }
      }
      errors[t] = diffuse_last_error();
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(statuses[t], DIFFUSE_OK) << "thread " << t << ": " << errors[t];
    EXPECT_SAME_AS_CPP("C (own pipeline, thread) vs C++ latents", latents[t], cpp.latents);
    EXPECT_SAME_AS_CPP("C (own pipeline, thread) vs C++ image", images[t], cpp.image_tensor);
  }
}

TEST(CApiThreads, OneSharedPipelineSerializesItsCalls) {
  DIFFUSE_REQUIRE_FIXTURES();
  const GenerateOutput& cpp = cpp_output();
  Pipeline pipe;
  ASSERT_EQ(create(pipe), DIFFUSE_OK) << diffuse_last_error();

  // Calls that overlapped inside the denoising loop would be seen here.
  struct Watch {
    std::atomic<int> inside{0};
    std::atomic<bool> overlapped{false};
  } watch;
  constexpr int kThreads = 4;
  std::array<diffuse_status, kThreads> statuses{};
  std::array<std::string, kThreads> errors;
  std::array<std::vector<float>, kThreads> latents;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      CRequest c;
      c.request.output_type = DIFFUSE_OUTPUT_LATENT;
      c.request.progress_user_data = &watch;
      c.request.progress = [](void* user_data, const diffuse_step_info* info) {
        auto& w = *static_cast<Watch*>(user_data);
        if (info->step == 0 && w.inside.fetch_add(1) != 0) w.overlapped = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        if (info->step + 1 == info->num_steps) w.inside.fetch_sub(1);
        return DIFFUSE_CONTINUE;
      };
      if (t % 2 == 0) {  // half into caller buffers, half into results
        latents[t].resize(24 * 16);
        diffuse_buffers buffers;
        diffuse_buffers_init(&buffers);
        buffers.latents = latents[t].data();
        buffers.latents_count = latents[t].size();
        statuses[t] = diffuse_generate_into(pipe.handle, &c.request, &buffers, nullptr);
      } else {
        Result result;
        statuses[t] = diffuse_generate(pipe.handle, &c.request, result.out());
        diffuse_tensor_view view;
        if (statuses[t] == DIFFUSE_OK && diffuse_result_tensor(result.handle, DIFFUSE_TENSOR_LATENTS, &view) == DIFFUSE_OK)
          latents[t].assign(view.data, view.data + view.count);
      }
      errors[t] = diffuse_last_error();
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_FALSE(watch.overlapped) << "two calls on one pipeline ran their loops at the same time";
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(statuses[t], DIFFUSE_OK) << "thread " << t << ": " << errors[t];
    EXPECT_SAME_AS_CPP("C (shared pipeline, thread) vs C++ latents", at::from_blob(latents[t].data(), {1, 24, 16}),
                       cpp.latents);
  }
}

TEST(CApiThreads, LastErrorIsPerThread) {
  diffuse_pipeline* pipe = nullptr;
  EXPECT_EQ(diffuse_pipeline_create(nullptr, nullptr, &pipe), DIFFUSE_ERROR_INVALID_ARGUMENT);
  const std::string mine = diffuse_last_error();
  EXPECT_EQ(mine, "diffuse_pipeline_create: folder is NULL");
  std::string theirs_before, theirs_after;
  std::thread([&] {
    theirs_before = diffuse_last_error();
    diffuse_pipeline_create("", nullptr, &pipe);
    theirs_after = diffuse_last_error();
  }).join();
  EXPECT_EQ(theirs_before, "");
  EXPECT_EQ(theirs_after, "diffuse_pipeline_create: folder is empty");
  EXPECT_EQ(std::string(diffuse_last_error()), mine);
  // A call that succeeds empties it.
  int major = 0;
  diffuse_version_numbers(&major, nullptr, nullptr);  // not a status call: leaves it
  EXPECT_EQ(std::string(diffuse_last_error()), mine);
  EXPECT_EQ(diffuse_set_log_level(DIFFUSE_LOG_INFO), DIFFUSE_OK);
  EXPECT_STREQ(diffuse_last_error(), "");
}

TEST(CApiThreads, CallingTheSamePipelineFromItsCallbackIsRefused) {
  DIFFUSE_REQUIRE_FIXTURES();
  Pipeline pipe;
  ASSERT_EQ(create(pipe), DIFFUSE_OK) << diffuse_last_error();
  struct Inner {
    diffuse_pipeline* pipe;
    diffuse_status status = DIFFUSE_OK;
    std::string error;
  } inner{pipe.handle};
  CRequest c;
  c.request.output_type = DIFFUSE_OUTPUT_LATENT;
  c.request.num_inference_steps = 1;
  c.request.progress_user_data = &inner;
  c.request.progress = [](void* user_data, const diffuse_step_info*) {
    auto& in = *static_cast<Inner*>(user_data);
    int loaded = 0;
    in.status = diffuse_pipeline_has(in.pipe, "vae", &loaded);
    in.error = diffuse_last_error();
    return DIFFUSE_CONTINUE;
  };
  Result result;
  ASSERT_EQ(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_EQ(inner.status, DIFFUSE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(inner.error.find("callbacks must not call into their own pipeline"), std::string::npos) << inner.error;
  int loaded = 0;
  EXPECT_EQ(diffuse_pipeline_has(pipe.handle, "vae", &loaded), DIFFUSE_OK);  // and afterwards it works
  EXPECT_EQ(loaded, 1);
}

// ---- cancel -------------------------------------------------------------------------------------------------

TEST(CApi, StopFromTheCallbackEndsTheLoopCleanly) {
  DIFFUSE_REQUIRE_FIXTURES();
  Pipeline pipe;
  ASSERT_EQ(create(pipe), DIFFUSE_OK) << diffuse_last_error();
  struct Stop {
    int64_t at;
    std::vector<int64_t> seen;
  } stop{1, {}};
  CRequest c;
  c.request.progress_user_data = &stop;
  c.request.progress = [](void* user_data, const diffuse_step_info* info) {
    auto& s = *static_cast<Stop*>(user_data);
    s.seen.push_back(info->step);
    return info->step == s.at ? DIFFUSE_STOP : DIFFUSE_CONTINUE;
  };
  Result result;
  ASSERT_EQ(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_EQ(stop.seen, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(diffuse_result_interrupted(result.handle), 1);

  // The C++ API stopped at the same step gives the same latents (and image, decoded from them).
  FluxPipeline cpp = cpp_pipeline();
  GenerateRequest request = cpp_request();
  request.callback = [](const StepInfo& step) { return step.step != 1; };
  const GenerateOutput stopped = cpp.generate(request);
  ASSERT_TRUE(stopped.interrupted);
  EXPECT_SAME_AS_CPP("C vs C++ latents stopped after step 1", tensor_of(result.handle, DIFFUSE_TENSOR_LATENTS),
                     stopped.latents);
  EXPECT_TENSORS_CLOSE(tensor_of(result.handle, DIFFUSE_TENSOR_LATENTS),
                       test::tiny_flux_reference().load("latents_after_step_1"), 1e-4);
  ASSERT_EQ(diffuse_result_image_count(result.handle), 1u);
  EXPECT_EQ(pixels_of(result.handle, 0), stopped.images[0].pixels);

  // Stopping at the last step is not an interruption; into buffers, the flag comes back too.
  std::vector<float> latents(24 * 16);
  diffuse_buffers buffers;
  diffuse_buffers_init(&buffers);
  buffers.latents = latents.data();
  buffers.latents_count = latents.size();
  c.request.output_type = DIFFUSE_OUTPUT_LATENT;
  int interrupted = -1;
  stop = {0, {}};
  ASSERT_EQ(diffuse_generate_into(pipe.handle, &c.request, &buffers, &interrupted), DIFFUSE_OK);
  EXPECT_EQ(interrupted, 1);
  stop = {3, {}};
  ASSERT_EQ(diffuse_generate_into(pipe.handle, &c.request, &buffers, &interrupted), DIFFUSE_OK);
  EXPECT_EQ(interrupted, 0);

  // The pipeline is still whole: the full call gives the full answer.
  c.request.progress = nullptr;
  ASSERT_EQ(diffuse_generate_into(pipe.handle, &c.request, &buffers, &interrupted), DIFFUSE_OK);
  EXPECT_SAME_AS_CPP("C after a cancel vs C++ latents", at::from_blob(latents.data(), {1, 24, 16}), cpp_output().latents);
}

// ---- log ----------------------------------------------------------------------------------------------------

TEST(CApi, LogCallbackReceivesTheLibrarysMessages) {
  DIFFUSE_REQUIRE_FIXTURES();
  struct Log {
    std::mutex mutex;
    std::vector<std::pair<diffuse_log_level, std::string>> lines;
  } log;
  Pipeline pipe;
  ASSERT_EQ(create(pipe), DIFFUSE_OK) << diffuse_last_error();
  ASSERT_EQ(diffuse_set_log_callback(
                [](void* user_data, diffuse_log_level level, const char* message) {
                  auto& l = *static_cast<Log*>(user_data);
                  std::lock_guard<std::mutex> lock(l.mutex);
                  l.lines.emplace_back(level, message);
                },
                &log),
            DIFFUSE_OK);
  CRequest c;
  c.request.height = 70;  // rounded down to 64, with a warning
  c.request.round_size = 1;
  c.request.num_inference_steps = 1;
  c.request.output_type = DIFFUSE_OUTPUT_LATENT;
  diffuse_sizes sizes;
  diffuse_sizes_init(&sizes);
  ASSERT_EQ(diffuse_generate_sizes(pipe.handle, &c.request, &sizes), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_EQ(sizes.height, 64);
  Result result;
  ASSERT_EQ(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_OK) << diffuse_last_error();
  {
    std::lock_guard<std::mutex> lock(log.mutex);
    ASSERT_EQ(log.lines.size(), 1u);
    EXPECT_EQ(log.lines[0].first, DIFFUSE_LOG_WARN);
    EXPECT_EQ(log.lines[0].second, "height 70 is not a multiple of 16; it is rounded down to 64");
  }
  // Below the level, nothing arrives.
  ASSERT_EQ(diffuse_set_log_level(DIFFUSE_LOG_ERROR), DIFFUSE_OK);
  ASSERT_EQ(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_OK);
  EXPECT_EQ(log.lines.size(), 1u);
  EXPECT_STATUS(diffuse_set_log_level(static_cast<diffuse_log_level>(17)), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "unknown log level 17");
  ASSERT_EQ(diffuse_set_log_level(DIFFUSE_LOG_INFO), DIFFUSE_OK);
  ASSERT_EQ(diffuse_set_log_callback(nullptr, nullptr), DIFFUSE_OK);  // back to stderr
  ASSERT_EQ(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_OK);
  EXPECT_EQ(log.lines.size(), 1u);
}

// ---- errors -------------------------------------------------------------------------------------------------

TEST(CApiErrors, CreateNamesWhatIsWrong) {
  DIFFUSE_REQUIRE_FIXTURES();
  const std::string folder = test::tiny_flux_pipeline().string();
  const fs::path empty_dir = test::temporary_folder("c_api_empty");
  diffuse_pipeline* pipe = reinterpret_cast<diffuse_pipeline*>(0x1);  // overwritten with NULL on failure
  EXPECT_STATUS(diffuse_pipeline_create((empty_dir / "nowhere").c_str(), nullptr, &pipe), DIFFUSE_ERROR_NOT_FOUND,
                "nowhere' is not a folder");
  EXPECT_EQ(pipe, nullptr);
  EXPECT_STATUS(diffuse_pipeline_create(empty_dir.c_str(), nullptr, &pipe), DIFFUSE_ERROR_NOT_FOUND,
                "has no model_index.json");
  EXPECT_STATUS(diffuse_pipeline_create(folder.c_str(), nullptr, nullptr), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "diffuse_pipeline_create: out is NULL");

  diffuse_pipeline_options options;
  auto expect_option_error = [&](auto&& set, diffuse_status status, const std::string& part) {
    diffuse_pipeline_options_init(&options);
    set(options);
    EXPECT_STATUS(diffuse_pipeline_create(folder.c_str(), &options, &pipe), status, part);
    EXPECT_EQ(pipe, nullptr);
  };
  expect_option_error([](auto& o) { o.dtype = "int3"; }, DIFFUSE_ERROR_INVALID_ARGUMENT, "unknown dtype 'int3'");
  expect_option_error([](auto& o) { o.device = "gpu7"; }, DIFFUSE_ERROR_INVALID_ARGUMENT, "unknown device 'gpu7'");
  static const char* const bad_skip[] = {"vea"};
  expect_option_error([](auto& o) { o.skip = bad_skip, o.skip_count = 1; }, DIFFUSE_ERROR_FAILED, "cannot skip 'vea'");
  expect_option_error([](auto& o) { o.skip = nullptr, o.skip_count = 2; }, DIFFUSE_ERROR_INVALID_ARGUMENT,
                      "options->skip is NULL");
  expect_option_error([](auto& o) { o.struct_size = 0; }, DIFFUSE_ERROR_INVALID_ARGUMENT, "struct_size is 0");
  expect_option_error([](auto& o) { o.struct_size = 8; }, DIFFUSE_ERROR_INVALID_ARGUMENT,
                      "smaller than the struct's first version");
  expect_option_error([](auto& o) { o.max_memory = "cuda:0"; }, DIFFUSE_ERROR_INVALID_ARGUMENT, "is not DEVICE=SIZE");
  // One process is a world of one: a degree of 2 does not fit it.
  expect_option_error([](auto& o) { o.ring_degree = 2; }, DIFFUSE_ERROR_FAILED, "more than the world size 1");
  expect_option_error([](auto& o) { o.ulysses_degree = -1; }, DIFFUSE_ERROR_INVALID_ARGUMENT,
                      "ulysses_degree must be 0 or more");
  expect_option_error([](auto& o) { o.cfg_degree = 2; }, DIFFUSE_ERROR_FAILED, "= 2 is more than the world size 1");
  expect_option_error([](auto& o) { o.cfg_degree = 3; }, DIFFUSE_ERROR_FAILED, "cfg_degree must be 1 or 2");
  expect_option_error([](auto& o) { o.cfg_degree = -1; }, DIFFUSE_ERROR_INVALID_ARGUMENT, "cfg_degree must be 0 or more");
  expect_option_error([](auto& o) { o.attention_backend = "fastest"; }, DIFFUSE_ERROR_INVALID_ARGUMENT,
                      "unknown attention backend 'fastest'");
  // The library's own check of the value shows that it got there.
  expect_option_error([](auto& o) { o.device_map = "diagonal"; }, DIFFUSE_ERROR_FAILED, "diagonal");
  expect_option_error([](auto& o) { o.device_map = "balanced", o.max_memory = "cuda:0=lots"; }, DIFFUSE_ERROR_FAILED,
                      "lots");

  // An older caller's smaller struct: init writes its bytes and not one past them.
  struct Older {
    alignas(diffuse_pipeline_options) unsigned char options[offsetof(diffuse_pipeline_options, ulysses_degree) +
                                                            sizeof(int32_t)];
    unsigned char guard[64];
  } older;
  std::memset(&older, 0xAB, sizeof older);
  diffuse_pipeline_options_init_sized(reinterpret_cast<diffuse_pipeline_options*>(older.options), sizeof older.options);
  EXPECT_EQ(reinterpret_cast<diffuse_pipeline_options*>(older.options)->struct_size, sizeof older.options);
  for (unsigned char byte : older.guard) ASSERT_EQ(byte, 0xAB) << "init wrote past the caller's struct";
  {
    Pipeline from_older;
    EXPECT_EQ(diffuse_pipeline_create(folder.c_str(), reinterpret_cast<diffuse_pipeline_options*>(older.options),
                                      from_older.out()),
              DIFFUSE_OK)
        << diffuse_last_error();
  }

  // A newer caller's larger struct: fine while the fields this library does not know are zero.
  struct Newer {
    diffuse_pipeline_options options;
    uint64_t future_field;
  } newer;
  std::memset(&newer, 0, sizeof newer);
  newer.options.struct_size = sizeof newer;
  newer.future_field = 1;
  EXPECT_STATUS(diffuse_pipeline_create(folder.c_str(), &newer.options, &pipe), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "sets fields that this library version");
  newer.future_field = 0;
  newer.options.skip = nullptr;
  Pipeline ok;
  EXPECT_EQ(diffuse_pipeline_create(folder.c_str(), &newer.options, ok.out()), DIFFUSE_OK) << diffuse_last_error();

  // A libtorch without CUDA: libtorch's own error, as a status.
  if (!at::hasCUDA()) {
    diffuse_pipeline_options_init(&options);
    options.device = "cuda";
    const diffuse_status status = diffuse_pipeline_create(folder.c_str(), &options, &pipe);
    EXPECT_TRUE(status == DIFFUSE_ERROR_TORCH || status == DIFFUSE_ERROR_FAILED)
        << diffuse_status_name(status) << ": " << diffuse_last_error();
    EXPECT_EQ(pipe, nullptr);
    std::printf("[ measured ] cuda on a CPU-only libtorch: %s: %s\n", diffuse_status_name(status), diffuse_last_error());
  }
}

TEST(CApiErrors, NullPointersAndBadRequests) {
  DIFFUSE_REQUIRE_FIXTURES();
  Pipeline pipe;
  ASSERT_EQ(create(pipe), DIFFUSE_OK) << diffuse_last_error();
  CRequest c;
  Result result;
  diffuse_sizes sizes;
  diffuse_sizes_init(&sizes);
  diffuse_buffers buffers;
  diffuse_buffers_init(&buffers);
  diffuse_tensor_view view;
  diffuse_image_view image;
  diffuse_times times;
  diffuse_pipeline_info info;
  info.struct_size = sizeof info;
  int flag = 0;

  EXPECT_STATUS(diffuse_generate(nullptr, &c.request, result.out()), DIFFUSE_ERROR_INVALID_ARGUMENT, "pipeline is NULL");
  EXPECT_STATUS(diffuse_generate(pipe.handle, nullptr, result.out()), DIFFUSE_ERROR_INVALID_ARGUMENT, "request is NULL");
  EXPECT_STATUS(diffuse_generate(pipe.handle, &c.request, nullptr), DIFFUSE_ERROR_INVALID_ARGUMENT, "out is NULL");
  EXPECT_STATUS(diffuse_generate_into(pipe.handle, &c.request, nullptr, nullptr), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "buffers is NULL");
  EXPECT_STATUS(diffuse_generate_sizes(pipe.handle, &c.request, nullptr), DIFFUSE_ERROR_INVALID_ARGUMENT, "sizes is NULL");
  EXPECT_STATUS(diffuse_encode(pipe.handle, nullptr, result.out()), DIFFUSE_ERROR_INVALID_ARGUMENT, "request is NULL");
  EXPECT_STATUS(diffuse_encode_into(nullptr, nullptr, nullptr), DIFFUSE_ERROR_INVALID_ARGUMENT, "pipeline is NULL");
  EXPECT_STATUS(diffuse_encode_sizes(pipe.handle, nullptr, &sizes), DIFFUSE_ERROR_INVALID_ARGUMENT, "request is NULL");
  EXPECT_STATUS(diffuse_decode(pipe.handle, nullptr, 384, 1, 64, 96, result.out()), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "latents is NULL");
  EXPECT_STATUS(diffuse_decode_into(pipe.handle, nullptr, 384, 1, 64, 96, &buffers), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "latents is NULL");
  EXPECT_STATUS(diffuse_decode_sizes(pipe.handle, 0, 64, 96, &sizes), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "batch must be at least 1");
  EXPECT_STATUS(diffuse_result_tensor(nullptr, DIFFUSE_TENSOR_LATENTS, &view), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "result is NULL");
  EXPECT_STATUS(diffuse_result_image(nullptr, 0, &image), DIFFUSE_ERROR_INVALID_ARGUMENT, "result is NULL");
  EXPECT_STATUS(diffuse_result_times(nullptr, &times), DIFFUSE_ERROR_INVALID_ARGUMENT, "result is NULL");
  EXPECT_STATUS(diffuse_pipeline_get_info(nullptr, &info), DIFFUSE_ERROR_INVALID_ARGUMENT, "pipeline is NULL");
  EXPECT_STATUS(diffuse_pipeline_get_info(pipe.handle, nullptr), DIFFUSE_ERROR_INVALID_ARGUMENT, "info is NULL");
  EXPECT_STATUS(diffuse_pipeline_has(pipe.handle, nullptr, &flag), DIFFUSE_ERROR_INVALID_ARGUMENT, "component is NULL");
  EXPECT_STATUS(diffuse_pipeline_has(pipe.handle, "unet", &flag), DIFFUSE_ERROR_INVALID_ARGUMENT, "no component 'unet'");
  EXPECT_STATUS(diffuse_pipeline_release(pipe.handle, "unet"), DIFFUSE_ERROR_INVALID_ARGUMENT, "no component 'unet'");
  EXPECT_STATUS(diffuse_save_png(nullptr, nullptr, 1, 1), DIFFUSE_ERROR_INVALID_ARGUMENT, "path is NULL");
  EXPECT_EQ(diffuse_result_image_count(nullptr), 0u);
  EXPECT_EQ(diffuse_result_interrupted(nullptr), 0);
  diffuse_pipeline_free(nullptr);
  diffuse_result_free(nullptr);
  diffuse_pipeline_options_init(nullptr);
  diffuse_generate_request_init(nullptr);
  info.struct_size = 4;
  EXPECT_STATUS(diffuse_pipeline_get_info(pipe.handle, &info), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "smaller than the struct's first version");

  auto expect_request_error = [&](auto&& set, const std::string& part) {
    CRequest bad;
    set(bad.request);
    EXPECT_STATUS(diffuse_generate(pipe.handle, &bad.request, result.out()), DIFFUSE_ERROR_INVALID_ARGUMENT, part);
    EXPECT_EQ(result.handle, nullptr);
    EXPECT_STATUS(diffuse_generate_sizes(pipe.handle, &bad.request, &sizes), DIFFUSE_ERROR_INVALID_ARGUMENT, part);
  };
  static float floats[384] = {};
  expect_request_error([](auto& r) { r.height = 100; }, "height 100 is not a multiple of 16 (the family's size multiple); use 96 or 112");
  expect_request_error([](auto& r) { r.width = 8; }, "width must be at least 16, got 8");
  expect_request_error([](auto& r) { r.prompt_count = 0; }, "give prompts (or prompt_embeds and pooled_prompt_embeds)");
  expect_request_error([](auto& r) { r.prompt_embeds = floats; }, "give either prompts or prompt_embeds, not both");
  expect_request_error([](auto& r) { r.prompts = nullptr; }, "request->prompts is NULL but its count is 1");
  expect_request_error([](auto& r) { r.num_inference_steps = -1; }, "num_inference_steps must be at least 1");
  expect_request_error([](auto& r) { r.num_images_per_prompt = 0; }, "num_images_per_prompt must be at least 1");
  expect_request_error([](auto& r) { r.max_sequence_length = 513; }, "max_sequence_length must be in [1, 512]");
  expect_request_error([](auto& r) { r.output_type = static_cast<diffuse_output_type>(9); }, "unknown output_type 9");
  expect_request_error([](auto& r) { r.latents = floats, r.latents_count = 100; },
                       "latents_count is 100 but this request's packed latents [1, 24, 16] are 384 floats");
  expect_request_error([](auto& r) { r.struct_size = 0; }, "request->struct_size is 0");

  // A component the call needs is not loaded: the library's own message.
  Pipeline text_only;
  ASSERT_EQ(create(text_only, {"transformer", "vae"}), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_STATUS(diffuse_generate(text_only.handle, &c.request, result.out()), DIFFUSE_ERROR_FAILED,
                "'transformer' is not loaded");
  EXPECT_STATUS(diffuse_decode(text_only.handle, floats, 384, 1, 64, 96, result.out()), DIFFUSE_ERROR_FAILED,
                "'vae' is not loaded");
}

TEST(CApi, SavePngWritesWhatItIsGiven) {
  const fs::path dir = test::temporary_folder("c_api_png");
  std::vector<uint8_t> pixels(4 * 3 * 3);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 7);
  ASSERT_EQ(diffuse_save_png((dir / "x.png").c_str(), pixels.data(), 4, 3), DIFFUSE_OK) << diffuse_last_error();
  const Image image = Image::load_png(dir / "x.png");
  EXPECT_EQ(image.width, 4);
  EXPECT_EQ(image.height, 3);
  EXPECT_EQ(image.pixels, pixels);
  EXPECT_STATUS(diffuse_save_png((dir / "x.png").c_str(), pixels.data(), 0, 3), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "image size 0x3");
  EXPECT_STATUS(diffuse_save_png((dir / "no" / "x.png").c_str(), pixels.data(), 4, 3), DIFFUSE_ERROR_FAILED, "x.png");
}

// ---- the C example program ------------------------------------------------------------------------------------

namespace {

struct ProgramRun {
  int exit_code;
  std::string output;
};

std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

ProgramRun run_c_generate(const std::vector<std::string>& args) {
  std::string command = quoted((fs::path(DIFFUSE_EXAMPLES_BINARY_DIR) / "c_generate").string());
  for (const auto& arg : args) {
    command += ' ';
    command += quoted(arg);
  }
  command += " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

#define REQUIRE_C_GENERATE()                                                                     \
  do {                                                                                           \
    if (!fs::exists(fs::path(DIFFUSE_EXAMPLES_BINARY_DIR) / "c_generate"))                       \
      GTEST_SKIP() << "examples/c_generate is not built in this build tree (examples are off)"; \
  } while (0)

}  // namespace

TEST(CGenerateProgram, ReproducesTheReferenceImage) {
  DIFFUSE_REQUIRE_FIXTURES();
  REQUIRE_C_GENERATE();
  const ReferenceCall& call = reference_call();
  const fs::path dir = test::temporary_folder("c_generate_program");
  std::vector<std::string> args = {"--model", test::tiny_flux_pipeline().string()};
  for (const auto& prompt : call.prompts) args.insert(args.end(), {"--prompt", prompt});
  args.insert(args.end(), {"--height", std::to_string(call.height), "--width", std::to_string(call.width), "--steps",
                           std::to_string(call.steps), "--guidance", std::to_string(call.guidance),
                           "--max-sequence-length", std::to_string(call.max_sequence_length), "--seed",
                           std::to_string(call.seed), "--output", (dir / "dog.png").string()});
  const ProgramRun result = run_c_generate(args);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("dog.png (96x64)"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("step 4/4"), std::string::npos) << result.output;

  const Image image = Image::load_png(dir / "dog.png");
  ASSERT_EQ(image.width, 96);
  at::Tensor pixels = at::from_blob(const_cast<uint8_t*>(image.pixels.data()), {1, image.height, image.width, 3}, at::kByte);
  const int worst = (pixels.to(at::kInt) - test::tiny_flux_reference().load("image_uint8").to(at::kInt)).abs().max().item<int>();
  EXPECT_LE(worst, 1) << "pixels differ from diffusers' by up to " << worst << " levels";
  expect_pixels_match(image.pixels, cpp_output().images[0].pixels);  // and the C++ API's (exactly, on the CPU)
}

// Qwen-Image from the program: negative prompt and true CFG scale from the flags, the family printed.
TEST(CGenerateProgram, QwenImageWithANegativePromptReproducesItsReference) {
  DIFFUSE_REQUIRE_FIXTURES();
  REQUIRE_C_GENERATE();
  const fs::path fixture = *test::fixtures_dir() / "tiny-qwenimage";
  const nlohmann::json j = JsonConfig::load(fixture / "reference.json").json();
  const fs::path dir = test::temporary_folder("c_generate_qwenimage");
  std::vector<std::string> args = {"--model", (fixture / "pipeline").string()};
  for (const auto& prompt : j.at("prompts")) args.insert(args.end(), {"--prompt", prompt.get<std::string>()});
  for (const auto& prompt : j.at("negative_prompts"))
    args.insert(args.end(), {"--negative-prompt", prompt.get<std::string>()});
  args.insert(args.end(), {"--height", std::to_string(j.at("height").get<int64_t>()), "--width",
                           std::to_string(j.at("width").get<int64_t>()), "--steps",
                           std::to_string(j.at("num_inference_steps").get<int64_t>()), "--true-cfg-scale",
                           std::to_string(j.at("true_cfg_scale").get<double>()), "--max-sequence-length",
                           std::to_string(j.at("max_sequence_length").get<int64_t>()), "--seed",
                           std::to_string(j.at("seed").get<int64_t>()), "--output", (dir / "dog.png").string()});
  const ProgramRun result = run_c_generate(args);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("QwenImagePipeline (scheduler FlowMatchEulerDiscreteScheduler"), std::string::npos)
      << result.output;
  const Image image = Image::load_png(dir / "dog.png");
  at::Tensor pixels = at::from_blob(const_cast<uint8_t*>(image.pixels.data()), {1, image.height, image.width, 3}, at::kByte);
  const SafetensorsFile reference(fixture / "reference.safetensors");
  const int worst = (pixels.to(at::kInt) - reference.load("image_uint8").to(at::kInt)).abs().max().item<int>();
  std::printf("[ measured ] c_generate tiny-qwenimage: pixels within %d levels of diffusers'\n", worst);
  EXPECT_LE(worst, 1) << "pixels differ from diffusers' by up to " << worst << " levels";

  // A scheduler the library does not know is named in the one error line.
  args.insert(args.end(), {"--scheduler", "NoSuchScheduler", "--quiet"});
  const ProgramRun bad = run_c_generate(args);
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("NoSuchScheduler"), std::string::npos) << bad.output;
}

TEST(CGenerateProgram, BadInputExitsNonZeroWithOneLine) {
  DIFFUSE_REQUIRE_FIXTURES();
  REQUIRE_C_GENERATE();
  const fs::path dir = test::temporary_folder("c_generate_bad");
  const std::string model = test::tiny_flux_pipeline().string();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--prompt", "x"}, "--model DIR is required"},
      {{"--model", model}, "--prompt TEXT is required"},
      {{"--model", (dir / "nowhere").string(), "--prompt", "x"}, "is not a folder"},
      {{"--model", model, "--prompt", "x", "--dtype", "int3"}, "unknown dtype 'int3'"},
      {{"--model", model, "--prompt", "x", "--height", "100", "--quiet"}, "not a multiple of 16"},
      {{"--model", model, "--prompt", "x", "--steps", "many"}, "--steps expects an integer"},
      {{"--model", model, "--prompt", "x", "--bogus", "1"}, "unknown option '--bogus'"},
  };
  for (const auto& [args, expected] : cases) {
    const ProgramRun result = run_c_generate(args);
    EXPECT_NE(result.exit_code, 0) << expected;
    EXPECT_NE(result.output.find(expected), std::string::npos) << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
  }
  EXPECT_TRUE(fs::is_empty(dir));
  const ProgramRun help = run_c_generate({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--model DIR"), std::string::npos);
}

// ---- every family ----------------------------------------------------------------------------------

namespace {

struct Family {
  std::string fixture;     // "tiny-sd"
  fs::path folder() const { return *test::fixtures_dir() / fixture / "pipeline"; }
  const nlohmann::json& json() const {
    if (json_.is_null()) json_ = JsonConfig::load(*test::fixtures_dir() / fixture / "reference.json").json();
    return json_;
  }
  const SafetensorsFile& reference() const {
    if (!reference_) reference_ = std::make_shared<SafetensorsFile>(*test::fixtures_dir() / fixture / "reference.safetensors");
    return *reference_;
  }
  mutable nlohmann::json json_;
  mutable std::shared_ptr<SafetensorsFile> reference_;
};

// The reference call of a family's reference.json as a C request (latent output). Holds the strings.
struct FamilyRequest {
  explicit FamilyRequest(const nlohmann::json& j) {
    prompt_text = j.at("prompts").get<std::vector<std::string>>();
    if (j.contains("negative_prompts")) negative_text = j.at("negative_prompts").get<std::vector<std::string>>();
    for (const auto& text : prompt_text) prompts.push_back(text.c_str());
    for (const auto& text : negative_text) negatives.push_back(text.c_str());
    diffuse_generate_request_init(&request);
    request.prompts = prompts.data();
    request.prompt_count = prompts.size();
    request.negative_prompts = negatives.empty() ? nullptr : negatives.data();
    request.negative_prompt_count = negatives.size();
    request.height = j.at("height").get<int64_t>();
    request.width = j.at("width").get<int64_t>();
    request.num_inference_steps = j.at("num_inference_steps").get<int64_t>();
    if (j.contains("guidance_scale")) request.guidance_scale = j.at("guidance_scale").get<double>();
    if (j.contains("true_cfg_scale")) request.true_cfg_scale = j.at("true_cfg_scale").get<double>();
    if (j.contains("max_sequence_length")) request.max_sequence_length = j.at("max_sequence_length").get<int64_t>();
    request.has_seed = 1;
    request.seed = j.at("seed").get<uint64_t>();
    request.output_type = DIFFUSE_OUTPUT_LATENT;
  }
  FamilyRequest(const FamilyRequest&) = delete;
  std::vector<std::string> prompt_text, negative_text;
  std::vector<const char*> prompts, negatives;
  diffuse_generate_request request;
};

diffuse_status create_family(Pipeline& pipeline, const Family& family, const char* device = nullptr) {
  diffuse_pipeline_options options;
  diffuse_pipeline_options_init(&options);
  options.device = device != nullptr ? device : device_name().c_str();
  return diffuse_pipeline_create(family.folder().c_str(), &options, pipeline.out());
}

diffuse_pipeline_info info_of(const Pipeline& pipe) {
  diffuse_pipeline_info info;
  std::memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  EXPECT_EQ(diffuse_pipeline_get_info(pipe.handle, &info), DIFFUSE_OK) << diffuse_last_error();
  return info;
}

std::string model_index_class(const Family& family) {
  return JsonConfig::load(family.folder() / "model_index.json").get_string("_class_name", "");
}

}  // namespace

TEST(CApiFamilies, InfoSaysEachFamilysDefaultsAndLatentLayout) {
  DIFFUSE_REQUIRE_FIXTURES();
  struct Expected {
    std::string fixture;
    int64_t default_steps;
    int32_t packed, negative;
  };
  for (const Expected& e : {Expected{"tiny-flux", 28, 1, 0}, Expected{"tiny-sd", 50, 0, 1},
                            Expected{"tiny-qwenimage", 50, 1, 1}}) {
    SCOPED_TRACE(e.fixture);
    const Family family{e.fixture};
    Pipeline pipe;
    ASSERT_EQ(create_family(pipe, family), DIFFUSE_OK) << diffuse_last_error();
    const diffuse_pipeline_info info = info_of(pipe);
    EXPECT_EQ(std::string(info.class_name), model_index_class(family));
    // Packed 2x2 patches double the VAE's factor (16 for the real FLUX.1 and Qwen-Image, 8 for SD).
    EXPECT_EQ(info.size_multiple, (e.packed ? 2 : 1) * info.vae_scale_factor);
    EXPECT_EQ(info.default_steps, e.default_steps);
    EXPECT_EQ(info.packed_latents, e.packed);
    EXPECT_EQ(info.uses_negative_prompt, e.negative);
    EXPECT_GT(info.default_guidance_scale, 0);
    EXPECT_GT(info.joint_attention_dim, 0);
    EXPECT_NE(std::string(info.scheduler), "");
    EXPECT_EQ(info.default_height % info.size_multiple, 0);
    std::printf("[ measured ] %s: %s, scheduler %s, default %lldx%lld, %lld steps, guidance %g\n", e.fixture.c_str(),
                info.class_name, info.scheduler, static_cast<long long>(info.default_height),
                static_cast<long long>(info.default_width), static_cast<long long>(info.default_steps),
                info.default_guidance_scale);

    // The latents' shape for a size and batch, in the family's layout.
    diffuse_sizes sizes;
    diffuse_sizes_init(&sizes);
    ASSERT_EQ(diffuse_decode_sizes(pipe.handle, 2, 64, 96, &sizes), DIFFUSE_OK) << diffuse_last_error();
    if (e.packed) {
      EXPECT_EQ(sizes.latents_ndim, 3);
      EXPECT_EQ(sizes.latents_shape[1], (64 / info.size_multiple) * (96 / info.size_multiple));
      EXPECT_EQ(sizes.latents_shape[2], info.num_channels_latents * 4);
    } else {
      EXPECT_EQ(sizes.latents_ndim, 4);
      EXPECT_EQ(sizes.latents_shape[1], info.num_channels_latents);
      EXPECT_EQ(sizes.latents_shape[2], 64 / info.vae_scale_factor);
      EXPECT_EQ(sizes.latents_shape[3], 96 / info.vae_scale_factor);
    }
    EXPECT_EQ(sizes.latents_shape[0], 2);
    size_t count = 1;
    for (int32_t d = 0; d < sizes.latents_ndim; ++d) count *= static_cast<size_t>(sizes.latents_shape[d]);
    EXPECT_EQ(sizes.latents_count, count);
  }
}

TEST(CApiFamilies, EachFamilyReproducesItsReference) {
  DIFFUSE_REQUIRE_FIXTURES();
  for (const char* fixture : {"tiny-flux", "tiny-sd", "tiny-qwenimage"}) {
    SCOPED_TRACE(fixture);
    const Family family{fixture};
    Pipeline pipe;
    ASSERT_EQ(create_family(pipe, family), DIFFUSE_OK) << diffuse_last_error();
    FamilyRequest c(family.json());
    Result result;
    ASSERT_EQ(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_OK) << diffuse_last_error();
    const at::Tensor latents = tensor_of(result.handle, DIFFUSE_TENSOR_LATENTS);
    test::print_error((std::string(fixture) + " latents_final").c_str(), latents,
                      family.reference().load("latents_final"));
    EXPECT_TENSORS_CLOSE(latents, family.reference().load("latents_final"), 1e-4);

    // The same into a caller buffer sized by diffuse_generate_sizes.
    diffuse_sizes sizes;
    diffuse_sizes_init(&sizes);
    ASSERT_EQ(diffuse_generate_sizes(pipe.handle, &c.request, &sizes), DIFFUSE_OK) << diffuse_last_error();
    std::vector<float> buffer(sizes.latents_count);
    diffuse_buffers buffers;
    diffuse_buffers_init(&buffers);
    buffers.latents = buffer.data();
    buffers.latents_count = buffer.size();
    ASSERT_EQ(diffuse_generate_into(pipe.handle, &c.request, &buffers, nullptr), DIFFUSE_OK) << diffuse_last_error();
    EXPECT_TENSORS_CLOSE(at::from_blob(buffer.data(), at::IntArrayRef(sizes.latents_shape, sizes.latents_ndim)),
                         family.reference().load("latents_final"), 1e-4);
  }
}

TEST(CApiFamilies, SchedulerByNameReproducesTheSwappedReference) {
  DIFFUSE_REQUIRE_FIXTURES();
  const Family family{"tiny-sd"};
  Pipeline pipe;
  ASSERT_EQ(create_family(pipe, family), DIFFUSE_OK) << diffuse_last_error();
  const std::string ddim = family.json().at("other_schedulers").at("ddim").get<std::string>();
  FamilyRequest c(family.json());
  c.request.scheduler = ddim.c_str();
  c.request.num_inference_steps = family.json().at("other_scheduler_steps").get<int64_t>();
  Result result;
  ASSERT_EQ(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_OK) << diffuse_last_error();
  test::print_error("tiny-sd ddim_latents_final", tensor_of(result.handle, DIFFUSE_TENSOR_LATENTS),
                    family.reference().load("ddim_latents_final"));
  EXPECT_TENSORS_CLOSE(tensor_of(result.handle, DIFFUSE_TENSOR_LATENTS), family.reference().load("ddim_latents_final"),
                       1e-4);
  EXPECT_EQ(std::string(info_of(pipe).scheduler), ddim);  // kept for later calls
  c.request.scheduler = "NoSuchScheduler";
  EXPECT_STATUS(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "NoSuchScheduler");
}

TEST(CApiFamilies, QwenImageEmbeddingsWithMasksRoundTrip) {
  DIFFUSE_REQUIRE_FIXTURES();
  const Family family{"tiny-qwenimage"};
  Pipeline pipe;
  ASSERT_EQ(create_family(pipe, family), DIFFUSE_OK) << diffuse_last_error();
  FamilyRequest c(family.json());

  // Encode with the negative prompts, then generate from the embeddings: the reference's latents.
  diffuse_encode_request encode;
  diffuse_encode_request_init(&encode);
  encode.prompts = c.prompts.data();
  encode.prompt_count = c.prompts.size();
  encode.negative_prompts = c.negatives.data();
  encode.negative_prompt_count = c.negatives.size();
  encode.do_classifier_free_guidance = 1;
  encode.max_sequence_length = c.request.max_sequence_length;
  Result embeddings;
  ASSERT_EQ(diffuse_encode(pipe.handle, &encode, embeddings.out()), DIFFUSE_OK) << diffuse_last_error();
  const at::Tensor positive = tensor_of(embeddings.handle, DIFFUSE_TENSOR_PROMPT_EMBEDS);
  const at::Tensor negative = tensor_of(embeddings.handle, DIFFUSE_TENSOR_NEGATIVE_PROMPT_EMBEDS);
  EXPECT_TENSORS_CLOSE(positive, family.reference().load("prompt_embeds"), 1e-4);
  EXPECT_TENSORS_CLOSE(negative, family.reference().load("negative_prompt_embeds"), 1e-4);
  diffuse_tensor_view view;
  // One prompt each: every position is valid, so no mask (as diffusers passes None).
  EXPECT_EQ(diffuse_result_tensor(embeddings.handle, DIFFUSE_TENSOR_PROMPT_EMBEDS_MASK, &view), DIFFUSE_ERROR_NOT_FOUND);

  // Masks given explicitly (all ones) change nothing.
  const std::vector<int64_t> mask(static_cast<size_t>(positive.size(0) * positive.size(1)), 1);
  const std::vector<int64_t> negative_mask(static_cast<size_t>(negative.size(0) * negative.size(1)), 1);
  FamilyRequest staged(family.json());
  staged.request.prompts = nullptr;
  staged.request.prompt_count = 0;
  staged.request.negative_prompts = nullptr;
  staged.request.negative_prompt_count = 0;
  staged.request.prompt_embeds = positive.data_ptr<float>();
  staged.request.embeds_batch = positive.size(0);
  staged.request.embeds_sequence_length = positive.size(1);
  staged.request.negative_prompt_embeds = negative.data_ptr<float>();
  staged.request.negative_embeds_sequence_length = negative.size(1);
  staged.request.prompt_embeds_mask = mask.data();
  staged.request.negative_prompt_embeds_mask = negative_mask.data();
  Result result;
  ASSERT_EQ(diffuse_generate(pipe.handle, &staged.request, result.out()), DIFFUSE_OK) << diffuse_last_error();
  test::print_error("tiny-qwenimage latents_final from embeddings", tensor_of(result.handle, DIFFUSE_TENSOR_LATENTS),
                    family.reference().load("latents_final"));
  EXPECT_TENSORS_CLOSE(tensor_of(result.handle, DIFFUSE_TENSOR_LATENTS), family.reference().load("latents_final"), 1e-4);

  // Qwen-Image's limit is its own: 1024 text tokens.
  c.request.max_sequence_length = 1025;
  EXPECT_STATUS(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "max_sequence_length must be in [1, 1024]");
}

// ---- one status per kind of failure -----------------------------------------------------------------

TEST(CApiErrors, EachKindOfFailureHasItsOwnStatus) {
  DIFFUSE_REQUIRE_FIXTURES();
  EXPECT_STREQ(diffuse_status_name(DIFFUSE_ERROR_CORRUPT_INPUT), "DIFFUSE_ERROR_CORRUPT_INPUT");
  EXPECT_STREQ(diffuse_status_name(DIFFUSE_ERROR_DISTRIBUTED), "DIFFUSE_ERROR_DISTRIBUTED");
  EXPECT_STREQ(diffuse_status_name(DIFFUSE_ERROR_CANCELLED), "DIFFUSE_ERROR_CANCELLED");
  // The numbers are ABI: the first ones never move.
  EXPECT_EQ(DIFFUSE_ERROR_INVALID_ARGUMENT, 1);
  EXPECT_EQ(DIFFUSE_ERROR_NOT_FOUND, 3);
  EXPECT_EQ(DIFFUSE_ERROR_FAILED, 4);
  EXPECT_EQ(DIFFUSE_ERROR_OUT_OF_MEMORY, 5);
  EXPECT_EQ(DIFFUSE_ERROR_INTERNAL, 7);

  const fs::path scratch = test::temporary_folder("c_api_statuses");
  Pipeline pipe;
  // Not found: a folder that is not there, and a pipeline copy whose transformer folder is gone.
  EXPECT_STATUS(diffuse_pipeline_create((scratch / "missing").c_str(), nullptr, pipe.out()), DIFFUSE_ERROR_NOT_FOUND,
                "missing' is not a folder");
  const fs::path copy = scratch / "tiny-flux";
  fs::copy(test::tiny_flux_pipeline(), copy, fs::copy_options::recursive);
  fs::rename(copy / "transformer", scratch / "transformer.away");
  EXPECT_STATUS(diffuse_pipeline_create(copy.c_str(), nullptr, pipe.out()), DIFFUSE_ERROR_NOT_FOUND, "transformer");
  EXPECT_EQ(pipe.handle, nullptr);
  fs::rename(scratch / "transformer.away", copy / "transformer");

  // Corrupt input: the transformer's checkpoint cut to half its length, then a config that is not JSON.
  const fs::path checkpoint = copy / "transformer" / "diffusion_pytorch_model.safetensors";
  const auto whole = fs::file_size(checkpoint);
  fs::resize_file(checkpoint, whole / 2);
  EXPECT_STATUS(diffuse_pipeline_create(copy.c_str(), nullptr, pipe.out()), DIFFUSE_ERROR_CORRUPT_INPUT,
                "diffusion_pytorch_model.safetensors");
  std::printf("[ measured ] truncated checkpoint: %s\n", diffuse_last_error());
  fs::copy_file(test::tiny_flux_pipeline() / "transformer" / "diffusion_pytorch_model.safetensors", checkpoint,
                fs::copy_options::overwrite_existing);
  {
    std::ofstream config(copy / "vae" / "config.json", std::ios::trunc);
    config << "{\"block_out_channels\": [8, 16,";
  }
  EXPECT_STATUS(diffuse_pipeline_create(copy.c_str(), nullptr, pipe.out()), DIFFUSE_ERROR_CORRUPT_INPUT, "config.json");

  // Out of memory: 10000x10000 on the CPU is refused before any work.
  Pipeline cpu;
  diffuse_pipeline_options options;
  diffuse_pipeline_options_init(&options);
  options.device = "cpu";
  ASSERT_EQ(diffuse_pipeline_create(test::tiny_flux_pipeline().c_str(), &options, cpu.out()), DIFFUSE_OK)
      << diffuse_last_error();
  CRequest huge;
  huge.request.height = 10000;
  huge.request.width = 10000;
  Result result;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_STATUS(diffuse_generate(cpu.handle, &huge.request, result.out()), DIFFUSE_ERROR_OUT_OF_MEMORY,
                "10000x10000 image needs at least");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 30.0);
  std::printf("[ measured ] 10000x10000 on the CPU: %s\n", diffuse_last_error());

  // Invalid argument: a bad value, and a negative prompt FLUX.1 does not take (the library's refusal).
  CRequest bad;
  bad.request.width = -16;
  EXPECT_STATUS(diffuse_generate(cpu.handle, &bad.request, result.out()), DIFFUSE_ERROR_INVALID_ARGUMENT,
                "width must be at least 16");
  EXPECT_STATUS(diffuse_pipeline_cancel(nullptr), DIFFUSE_ERROR_INVALID_ARGUMENT, "pipeline is NULL");
}

TEST(CApiErrors, CancelFromTheCallbackOrAnotherThreadReturnsCancelled) {
  DIFFUSE_REQUIRE_FIXTURES();
  Pipeline pipe;
  ASSERT_EQ(create(pipe), DIFFUSE_OK) << diffuse_last_error();
  struct State {
    diffuse_pipeline* pipe;
    std::vector<int64_t> seen;
  } state{pipe.handle, {}};
  CRequest c;
  c.request.progress_user_data = &state;
  c.request.progress = [](void* user_data, const diffuse_step_info* info) {
    auto& s = *static_cast<State*>(user_data);
    s.seen.push_back(info->step);
    if (info->step == 1) diffuse_pipeline_cancel(s.pipe);  // allowed from the pipeline's own callback
    return DIFFUSE_CONTINUE;
  };
  Result result;
  EXPECT_STATUS(diffuse_generate(pipe.handle, &c.request, result.out()), DIFFUSE_ERROR_CANCELLED, "cancelled");
  EXPECT_EQ(result.handle, nullptr);
  EXPECT_EQ(state.seen, (std::vector<int64_t>{0, 1}));

  // Into buffers too; then the pipeline is whole: the next call runs to the end and matches C++.
  std::vector<float> latents(24 * 16);
  diffuse_buffers buffers;
  diffuse_buffers_init(&buffers);
  buffers.latents = latents.data();
  buffers.latents_count = latents.size();
  c.request.output_type = DIFFUSE_OUTPUT_LATENT;
  state.seen.clear();
  EXPECT_STATUS(diffuse_generate_into(pipe.handle, &c.request, &buffers, nullptr), DIFFUSE_ERROR_CANCELLED, "cancelled");
  c.request.progress = nullptr;
  ASSERT_EQ(diffuse_generate_into(pipe.handle, &c.request, &buffers, nullptr), DIFFUSE_OK) << diffuse_last_error();
  EXPECT_SAME_AS_CPP("C after a cancel vs C++ latents", at::from_blob(latents.data(), {1, 24, 16}), cpp_output().latents);

  // From another thread, while the loop runs: the callback waits for the cancel at step 0.
  struct Waiter {
    std::atomic<bool> started{false};
    std::atomic<bool> go{false};
  } waiter;
  c.request.progress_user_data = &waiter;
  c.request.progress = [](void* user_data, const diffuse_step_info*) {
    auto& w = *static_cast<Waiter*>(user_data);
    w.started = true;
    while (!w.go) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return DIFFUSE_CONTINUE;
  };
  std::thread canceller([&] {
    while (!waiter.started) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_EQ(diffuse_pipeline_cancel(pipe.handle), DIFFUSE_OK);
    waiter.go = true;
  });
  const diffuse_status status = diffuse_generate_into(pipe.handle, &c.request, &buffers, nullptr);
  canceller.join();
  EXPECT_EQ(status, DIFFUSE_ERROR_CANCELLED) << diffuse_status_name(status) << ": " << diffuse_last_error();
}
