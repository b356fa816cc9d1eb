#include "diffuse/pipelines/stable_diffusion_pipeline.hpp"

#include <ATen/ATen.h>
#include <unistd.h>

#include "diffuse/error.hpp"
#include "diffuse/errors.hpp"
#include "diffuse/io/inspect.hpp"
#include "diffuse/models/attention_backend.hpp"
#include "diffuse/models/graph_call.hpp"
#include "diffuse/pipelines/flux_latents.hpp"
#include "diffuse/pipelines/guidance.hpp"
#include "diffuse/pipelines/progress_bar.hpp"
#include "diffuse/placement/device_memory.hpp"
#include "diffuse/tokenizers/clip_tokenizer.hpp"
#include "log.hpp"
#include "pipeline_support.hpp"

namespace diffuse {
namespace {

constexpr int64_t kDefaultSteps = 50;
constexpr double kDefaultGuidance = 7.5;

// The negative prompts for `batch` prompts: "" for each when none are given, one given for all, or
// one per prompt (diffusers' rules, with its errors).
std::vector<std::string> negative_prompts(const PromptList& negative, size_t batch) {
  if (negative.empty()) return std::vector<std::string>(batch, "");
  if (negative.size() == 1) return std::vector<std::string>(batch, negative.items().front());
  if (negative.size() != batch)
    throw Error("negative_prompt has " + std::to_string(negative.size()) + " entries but prompt has " +
                std::to_string(batch) + "; give one negative prompt, or one per prompt");
  return negative.items();
}

}  // namespace

const PipelineSpec& StableDiffusionPipeline::pipeline_spec() {
  static const PipelineSpec spec{
      .class_name = "StableDiffusionPipeline",
      .components = {{"scheduler", scheduler_names()},
                     {"text_encoder", {"CLIPTextModel"}},
                     {"tokenizer", {"CLIPTokenizer", "CLIPTokenizerFast"}},
                     {"unet", {"UNet2DConditionModel"}},
                     {"vae", {"AutoencoderKL"}}},
      .model_cpu_offload_seq = {"text_encoder", "unet", "vae"},
      .tokenizer_encoders = {{"tokenizer", "text_encoder"}},
  };
  return spec;
}

StableDiffusionPipeline StableDiffusionPipeline::from_pretrained(const std::filesystem::path& folder,
                                                                 PipelineOptions options) {
  StableDiffusionPipeline pipe;
  pipe.load_components(folder, options);
  // Configs are read even for skipped models: latent shapes need them.
  pipe.vae_config_ = pipe.has("vae") ? pipe.vae()->config()
                                     : AutoencoderKLConfig::from_file(pipe.component_folder("vae") / "config.json");
  pipe.unet_config_ = pipe.has("unet") ? pipe.unet()->config()
                                       : UNet2DConditionConfig::from_file(pipe.component_folder("unet") / "config.json");
  pipe.vae_scale_factor_ = pipe.vae_config_.vae_scale_factor();
  if (pipe.has("unet")) pipe.unet()->set_attention_backend(parse_attention_backend(options.attention_backend));
  pipe.enable_parallelism_from(options);
  return pipe;
}

void StableDiffusionPipeline::check_parallel_config(const ParallelConfig& config) const {
  if (config.splits_context())
    throw Error("StableDiffusionPipeline: ring_degree " + std::to_string(config.ring_degree) + " x ulysses_degree " +
                std::to_string(config.ulysses_degree) +
                " asks for context parallelism, which splits a transformer's tokens; a UNet has none to split. "
                "Use cfg_degree 2 alone (two ranks per image), and data parallelism for more prompts");
}

PipelineInfo StableDiffusionPipeline::info() const {
  return {.class_name = class_name(),
          .vae_scale_factor = vae_scale_factor_,
          .size_multiple = vae_scale_factor_,
          .default_height = unet_config_.sample_size * vae_scale_factor_,
          .default_width = unet_config_.sample_size * vae_scale_factor_,
          .default_steps = kDefaultSteps,
          .default_guidance_scale = kDefaultGuidance,
          .num_channels_latents = unet_config_.in_channels,
          .packed_latents = false,
          .uses_negative_prompt = true,
          .empty_negative_prompt = true,  // diffusers encodes "" for the unconditional half
          .true_cfg = false,
          .scheduler = has("scheduler") ? components_.get<Scheduler>("scheduler").class_name() : ""};
}

UNet2DConditionModel StableDiffusionPipeline::unet() const {
  return require_model<UNet2DConditionModel>("unet", "denoising");
}
AutoencoderKL StableDiffusionPipeline::vae() const { return require_model<AutoencoderKL>("vae", "decoding latents"); }
ClipTextModel StableDiffusionPipeline::text_encoder() const {
  return require_model<ClipTextModel>("text_encoder", "encoding a prompt");
}

PromptEmbeddings StableDiffusionPipeline::encode_prompt(const EncodeRequest& request) {
  const std::vector<std::string>& prompts = request.prompt.items();
  if (prompts.empty()) throw Error("encode_prompt: the prompt list is empty");
  if (request.num_images_per_prompt < 1)
    throw Error("num_images_per_prompt must be at least 1, got " + std::to_string(request.num_images_per_prompt));
  const std::vector<std::string> negatives = negative_prompts(request.negative_prompt, prompts.size());
  auto& tokenizer = require_object<ClipTokenizer>("tokenizer", "encoding a prompt");
  ClipTextModel encoder = text_encoder();

  at::NoGradGuard no_grad;
  const c10::Device device = execution_device("text_encoder");
  const auto running = on_device_while_running("text_encoder");
  // Padded to model_max_length (77) and truncated, as diffusers tokenizes; the condition is CLIP's
  // last_hidden_state, in the text encoder's dtype.
  auto encode = [&](const std::vector<std::string>& texts) {
    const at::Tensor ids = tokenizer.encode_batch(texts, tokenizer.model_max_length).to(device);
    return repeat_rows(encoder->forward(ids).last_hidden_state, request.num_images_per_prompt);
  };
  PromptEmbeddings out;
  out.prompt_embeds = encode(prompts);
  if (request.do_classifier_free_guidance) out.negative_prompt_embeds = encode(negatives);
  return out;
}

at::Tensor StableDiffusionPipeline::decode_latents(const at::Tensor& latents) {
  AutoencoderKL decoder = vae();
  if (latents.dim() != 4 || latents.size(1) != vae_config_.latent_channels)
    throw Error("decode_latents: expected latents [batch, " + std::to_string(vae_config_.latent_channels) +
                ", height / 8, width / 8], got " + c10::str(latents.sizes()));
  at::NoGradGuard no_grad;
  const c10::Device device = execution_device("vae");
  const c10::ScalarType dtype = decoder->parameters().front().scalar_type();
  const auto running = on_device_while_running("vae");
  at::Tensor decoded = decoder->decode(unscale_latents(latents, decoder->config()).to(device, dtype));
  // VaeImageProcessor.postprocess: denormalize [-1, 1] -> [0, 1].
  return (decoded.to(at::kFloat) / 2 + 0.5).clamp(0, 1);
}

at::Tensor StableDiffusionPipeline::decode_latents(const at::Tensor& latents, int64_t height, int64_t width) {
  const int64_t factor = vae_scale_factor_;
  if (latents.dim() != 4 || latents.size(1) != vae_config_.latent_channels || latents.size(2) * factor != height ||
      latents.size(3) * factor != width)
    throw Error("decode_latents: expected latents [batch, " + std::to_string(vae_config_.latent_channels) + ", " +
                std::to_string(height / factor) + ", " + std::to_string(width / factor) + "] for a " +
                std::to_string(height) + "x" + std::to_string(width) + " image, got " + c10::str(latents.sizes()));
  return decode_latents(latents);
}

// The largest activations of a request, estimated from the shapes alone, against the memory of the
// device that holds them, so that an absurd size is refused before any work.
void StableDiffusionPipeline::check_memory_for(int64_t rows, int64_t height, int64_t width, bool decode) {
  const c10::Device device = has("unet") ? execution_device("unet") : device_;
  const uint64_t available = available_memory(device.str());
  if (available == 0) return;  // unknown
  const auto r = static_cast<uint64_t>(rows);
  uint64_t need = 0;
  std::string what;
  if (has("unet")) {
    // The first block's self-attention over every latent position: math attention holds float32 scores
    // and probabilities for each pair; fused kernels only the tokens.
    const uint64_t tokens = static_cast<uint64_t>(height / vae_scale_factor_) * static_cast<uint64_t>(width / vae_scale_factor_);
    const uint64_t heads = static_cast<uint64_t>(unet_config_.num_attention_heads.front());
    const at::Tensor probe = at::empty({1, 1, 1, 8}, at::TensorOptions(dtype_).device(device));
    const bool math = resolve_attention_backend(unet()->attention_backend(), probe) == AttentionBackend::math;
    need = math ? 2 * 4 * r * heads * tokens * tokens
                : 16 * r * tokens * static_cast<uint64_t>(unet_config_.block_out_channels.front()) * 4;
    what = math ? "attention scores over " + std::to_string(tokens) + " latent positions (the math path)"
                : "the UNet's activations over " + std::to_string(tokens) + " latent positions";
  }
  if (decode && !vae_config_.block_out_channels.empty()) {
    const uint64_t decoder = 2 * 4 * r * static_cast<uint64_t>(vae_config_.block_out_channels.front()) *
                             static_cast<uint64_t>(height) * static_cast<uint64_t>(width);
    if (decoder > need) need = decoder, what = "the VAE decoder at full resolution";
  }
  if (need > available)
    throw OutOfMemoryError("a " + std::to_string(height) + "x" + std::to_string(width) + " image needs at least " +
                format_bytes(need) + " on " + device.str() + " for " + what + ", but " + format_bytes(available) +
                " is available; ask for a smaller size");
}

GenerateOutput StableDiffusionPipeline::generate(const GenerateRequest& request) {
  const auto start = Clock::now();
  // ---- check the request before any model runs ---------------------------------------------------
  const int64_t num_inference_steps = request.num_inference_steps.value_or(kDefaultSteps);
  check_common_request(request, num_inference_steps);
  if (request.sigmas) throw Error("StableDiffusionPipeline takes no sigmas (its scheduler sets the schedule)");
  if (!request.prompt_2.empty() || request.pooled_prompt_embeds.defined())
    throw Error("StableDiffusionPipeline takes no prompt_2 or pooled_prompt_embeds (those are FLUX.1's)");
  if (request.true_cfg_scale || request.prompt_embeds_mask.defined() || request.negative_prompt_embeds_mask.defined())
    throw Error("StableDiffusionPipeline takes no true_cfg_scale or prompt embedding masks (those are Qwen-Image's; "
                "SD's classifier-free guidance is guidance_scale)");
  const double guidance_scale = request.guidance_scale.value_or(kDefaultGuidance);
  // Under cfg_degree 2 the unconditional batch runs on cfg index 0 and the conditional on cfg index 1.
  const ClassifierFreeGuidance guidance{
      guidance_scale,
      cfg_group_for_call(guidance_scale > 1, "guidance_scale " + c10::str(guidance_scale) + " is not above 1")};
  const int64_t default_size = unet_config_.sample_size * vae_scale_factor_;
  const int64_t height = checked_image_size(request.height, default_size, vae_scale_factor_, request.round_size, "height");
  const int64_t width = checked_image_size(request.width, default_size, vae_scale_factor_, request.round_size, "width");
  const bool has_prompt = !request.prompt.empty();
  const int64_t batch =
      (has_prompt ? static_cast<int64_t>(request.prompt.size()) : request.prompt_embeds.size(0)) *
      request.num_images_per_prompt;
  if (!has_prompt) {
    const at::Tensor& pe = request.prompt_embeds;
    if (pe.dim() != 3 || pe.size(2) != unet_config_.cross_attention_dim.front())
      throw Error("prompt_embeds have shape " + c10::str(pe.sizes()) + "; expected [batch, tokens, " +
                  std::to_string(unet_config_.cross_attention_dim.front()) + "]");
    const at::Tensor& ne = request.negative_prompt_embeds;
    if (ne.defined() && ne.sizes() != pe.sizes())
      throw Error("negative_prompt_embeds have shape " + c10::str(ne.sizes()) + " but prompt_embeds " +
                  c10::str(pe.sizes()) + "; they must match");
  }
  check_memory_for(guidance.enabled() && !guidance.split() ? 2 * batch : batch, height, width, request.output_type != OutputType::Latent);

  GenerateOutput out;
  out.height = height;
  out.width = width;

  // ---- encode --------------------------------------------------------------------------------------
  auto stage = Clock::now();
  PromptEmbeddings embeddings;
  if (has_prompt) {
    embeddings = encode_prompt({.prompt = request.prompt,
                                .negative_prompt = request.negative_prompt,
                                .do_classifier_free_guidance = guidance.enabled(),
                                .num_images_per_prompt = request.num_images_per_prompt});
  } else {
    embeddings.prompt_embeds = repeat_rows(request.prompt_embeds, request.num_images_per_prompt);
    if (guidance.enabled()) {
      // diffusers encodes "" for the unconditional half when no negative embeddings are given.
      embeddings.negative_prompt_embeds =
          request.negative_prompt_embeds.defined()
              ? repeat_rows(request.negative_prompt_embeds, request.num_images_per_prompt)
              : encode_prompt({.prompt = std::vector<std::string>(request.prompt_embeds.size(0), ""),
                               .num_images_per_prompt = request.num_images_per_prompt})
                    .prompt_embeds;
    }
  }
  out.times.encode_seconds = seconds_since(stage);

  // ---- denoise -------------------------------------------------------------------------------------
  stage = Clock::now();
  UNet2DConditionModel model = unet();
  Scheduler& steps = scheduler();
  const c10::Device device = execution_device("unet");
  const c10::ScalarType dtype = model->parameters().front().scalar_type();
  steps.set_timesteps(num_inference_steps);
  const at::Tensor timesteps = steps.timesteps();
  const int64_t num_steps = timesteps.size(0);

  const at::Generator generator = request_generator(request, parallel_world_);
  const std::vector<int64_t> shape = {batch, unet_config_.in_channels, height / vae_scale_factor_,
                                      width / vae_scale_factor_};
  at::Tensor latents;
  if (request.latents.defined()) {
    if (request.latents.sizes() != at::IntArrayRef(shape))
      throw Error("latents have shape " + c10::str(request.latents.sizes()) + " but this request needs " +
                  c10::str(at::IntArrayRef(shape)) + " (" + std::to_string(height) + "x" + std::to_string(width) + ")");
    latents = request.latents.to(device, dtype);
  } else {
    latents = randn_tensor(shape, generator, at::TensorOptions(dtype).device(device));
  }
  // prepare_latents: the noise at the scheduler's starting scale.
  latents = latents * steps.init_noise_sigma();

  const at::Tensor condition =
      guidance.batch(embeddings.negative_prompt_embeds, embeddings.prompt_embeds).to(device, dtype);
  ProgressBar progress(num_steps, request.progress.value_or(isatty(STDERR_FILENO) == 1));
  at::NoGradGuard no_grad;
  {
    const auto running = on_device_while_running("unet");
    // Under a device map the last block may run on another GPU than the latents live on.
    CudaGraphCall denoise([&](const std::vector<at::Tensor>& in) { return model->forward(in[0], in[1], in[2]).to(device); },
                          can_capture_cuda_graph("unet"));
    for (int64_t i = 0; i < num_steps; ++i) {
      const at::Tensor t = timesteps[i];
      const double timestep = t.item<double>();
      const at::Tensor input = steps.scale_model_input(guidance.batch(latents), timestep);
      const at::Tensor noise_pred = guidance.combine(denoise({input, t.to(device), condition}));
      latents = steps.step(noise_pred, timestep, latents, generator);
      progress.advance();
      if (request.callback && !request.callback(StepInfo{i, num_steps, timestep, latents})) {
        out.interrupted = i + 1 < num_steps;
        break;
      }
    }
  }
  out.latents = latents;
  out.times.denoise_seconds = seconds_since(stage);

  // ---- decode --------------------------------------------------------------------------------------
  // Under CFG parallelism every rank holds the same latents; rank 0 alone makes the image.
  if (request.output_type != OutputType::Latent && parallel_rank() == 0) {
    stage = Clock::now();
    out.image_tensor = decode_latents(out.latents).to(at::kCPU);
    if (request.output_type == OutputType::Image) out.images = images_from_tensor(out.image_tensor);
    out.times.decode_seconds = seconds_since(stage);
  }
  out.times.total_seconds = seconds_since(start);
  return out;
}

}  // namespace diffuse
