#include "diffuse/pipelines/flux_pipeline.hpp"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "diffuse/distributed/communicator.hpp"
#include "diffuse/error.hpp"
#include "diffuse/errors.hpp"
#include "diffuse/io/inspect.hpp"
#include "diffuse/models/attention_backend.hpp"
#include "diffuse/models/graph_call.hpp"
#include "diffuse/pipelines/flux_latents.hpp"
#include "diffuse/pipelines/progress_bar.hpp"
#include "diffuse/placement/device_memory.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"
#include "diffuse/tokenizers/clip_tokenizer.hpp"
#include "diffuse/tokenizers/t5_tokenizer.hpp"
#include "log.hpp"
#include "pipeline_support.hpp"

namespace diffuse {

OutputType parse_output_type(std::string_view name) {
  if (name == "image" || name == "pil" || name == "np") return OutputType::Image;
  if (name == "latent") return OutputType::Latent;
  if (name == "tensor" || name == "pt") return OutputType::Tensor;
  throw Error("unknown output type '" + std::string(name) + "' (expected image, latent or tensor)");
}

const PipelineSpec& FluxPipeline::pipeline_spec() {
  static const PipelineSpec spec{
      .class_name = "FluxPipeline",
      .components = {{"scheduler", {"FlowMatchEulerDiscreteScheduler"}},
                     {"text_encoder", {"CLIPTextModel"}},
                     {"text_encoder_2", {"T5EncoderModel"}},
                     {"tokenizer", {"CLIPTokenizer", "CLIPTokenizerFast"}},
                     {"tokenizer_2", {"T5TokenizerFast", "T5Tokenizer"}},
                     {"transformer", {"FluxTransformer2DModel"}},
                     {"vae", {"AutoencoderKL"}}},
      .model_cpu_offload_seq = {"text_encoder", "text_encoder_2", "transformer", "vae"},
      .tokenizer_encoders = {{"tokenizer", "text_encoder"}, {"tokenizer_2", "text_encoder_2"}},
  };
  return spec;
}

FluxPipeline FluxPipeline::from_pretrained(const std::filesystem::path& folder, FluxPipelineOptions options) {
  FluxPipeline pipe;
  pipe.load_components(folder, options);
  // Configs are read even for skipped models: latent shapes need them.
  pipe.vae_config_ = pipe.has("vae") ? pipe.vae()->config()
                                     : AutoencoderKLConfig::from_file(pipe.component_folder("vae") / "config.json");
  pipe.transformer_config_ = pipe.has("transformer")
                                 ? pipe.transformer()->config()
                                 : FluxTransformerConfig::from_file(pipe.component_folder("transformer") / "config.json");
  pipe.vae_scale_factor_ = pipe.vae_config_.vae_scale_factor();
  pipe.num_channels_latents_ = pipe.transformer_config_.in_channels / 4;
  if (pipe.has("transformer"))
    pipe.transformer()->set_attention_backend(parse_attention_backend(options.attention_backend));
  pipe.enable_parallelism_from(options);
  return pipe;
}

PipelineInfo FluxPipeline::info() const {
  return {.class_name = class_name(),
          .vae_scale_factor = vae_scale_factor_,
          .size_multiple = vae_scale_factor_ * 2,
          .default_height = default_sample_size * vae_scale_factor_,
          .default_width = default_sample_size * vae_scale_factor_,
          .default_steps = 28,
          .default_guidance_scale = 3.5,
          .num_channels_latents = num_channels_latents_,
          .packed_latents = true,
          .uses_negative_prompt = false,
          .empty_negative_prompt = false,
          .true_cfg = false,
          .scheduler = has("scheduler") ? components_.get<Scheduler>("scheduler").class_name() : ""};
}

void FluxPipeline::check_parallel_config(const ParallelConfig& config) const {
  if (config.cfg_degree > 1)
    throw Error("FluxPipeline: cfg_degree " + std::to_string(config.cfg_degree) +
                " needs an unconditional pass to put on the other ranks, and FLUX.1 runs none (its guidance is "
                "distilled into the model); use ring_degree or ulysses_degree");
  // The Ulysses degree against the heads, before the mesh's collectives.
  config.context().validate(config.context_degree(), transformer_config_.num_attention_heads);
}

void FluxPipeline::enable_context_parallelism(const ContextParallelConfig& config, std::shared_ptr<Communicator> group) {
  transformer()->enable_parallelism(config, std::move(group));
}

void FluxPipeline::disable_context_parallelism() {
  if (has("transformer")) transformer()->disable_parallelism();
}

FluxTransformer2DModel FluxPipeline::transformer() const {
  return require_model<FluxTransformer2DModel>("transformer", "denoising");
}
AutoencoderKL FluxPipeline::vae() const { return require_model<AutoencoderKL>("vae", "decoding latents"); }
ClipTextModel FluxPipeline::text_encoder() const {
  return require_model<ClipTextModel>("text_encoder", "encoding a prompt");
}
T5EncoderModel FluxPipeline::text_encoder_2() const {
  return require_model<T5EncoderModel>("text_encoder_2", "encoding a prompt");
}

PromptEmbeddings FluxPipeline::encode_prompt(const EncodeRequest& request) {
  const std::vector<std::string>& prompts = request.prompt.items();
  const std::vector<std::string>& prompts_2 = request.prompt_2.empty() ? prompts : request.prompt_2.items();
  if (prompts.empty()) throw Error("encode_prompt: the prompt list is empty");
  if (prompts_2.size() != prompts.size())
    throw Error("encode_prompt: prompt has " + std::to_string(prompts.size()) + " entries but prompt_2 has " +
                std::to_string(prompts_2.size()));
  if (request.num_images_per_prompt < 1)
    throw Error("num_images_per_prompt must be at least 1, got " + std::to_string(request.num_images_per_prompt));
  if (request.max_sequence_length < 1 || request.max_sequence_length > 512)
    throw Error("max_sequence_length must be in [1, 512], got " + std::to_string(request.max_sequence_length));
  auto& tokenizer = require_object<ClipTokenizer>("tokenizer", "encoding a prompt");
  auto& tokenizer_2 = require_object<T5Tokenizer>("tokenizer_2", "encoding a prompt");
  ClipTextModel clip = text_encoder();
  T5EncoderModel t5 = text_encoder_2();

  at::NoGradGuard no_grad;
  const c10::Device clip_device = execution_device("text_encoder");
  const c10::Device t5_device = execution_device("text_encoder_2");
  at::Tensor pooled, sequence;
  {
    const auto running = on_device_while_running("text_encoder");
    at::Tensor clip_ids = tokenizer.encode_batch(prompts, tokenizer.model_max_length).to(clip_device);
    pooled = clip->forward(clip_ids).pooler_output;
  }
  {
    const auto running = on_device_while_running("text_encoder_2");
    at::Tensor t5_ids = tokenizer_2.encode_batch(prompts_2, request.max_sequence_length).to(t5_device);
    sequence = t5->forward(t5_ids);
  }

  PromptEmbeddings out;
  out.pooled_prompt_embeds = repeat_rows(pooled.to(dtype_), request.num_images_per_prompt);
  out.prompt_embeds = repeat_rows(sequence.to(dtype_), request.num_images_per_prompt);
  out.text_ids = at::zeros({request.max_sequence_length, 3}, at::TensorOptions().dtype(dtype_).device(t5_device));
  return out;
}

// The largest activations of a request, estimated from the shapes alone, against the memory of the
// device that holds them: a request that cannot fit (100 megapixels on the CPU's math attention, say)
// is refused before any work, instead of failing deep inside the allocator or computing for hours.
void FluxPipeline::check_memory_for(const GenerateRequest& request, int64_t height, int64_t width) {
  const c10::Device device = has("transformer") ? execution_device("transformer") : device_;
  const uint64_t available = available_memory(device.str());
  if (available == 0) return;  // unknown
  const auto rows = static_cast<uint64_t>(std::max<int64_t>(request.num_images_per_prompt, 1));
  const uint64_t tokens = static_cast<uint64_t>((height / 16) * (width / 16) + request.max_sequence_length);
  struct Need {
    uint64_t bytes;
    std::string what;
  } need{0, ""};
  if (has("transformer")) {
    const FluxTransformerConfig& c = transformer_config_;
    const at::Tensor probe = at::empty({1, 1, 1, c.attention_head_dim}, at::TensorOptions(dtype_).device(device));
    const bool math = resolve_attention_backend(transformer()->attention_backend(), probe) == AttentionBackend::math;
    const auto shards = static_cast<uint64_t>(context_parallel_degree());
    // Math attention holds float32 scores and probabilities for every (query, key) pair of a head's
    // shard; fused kernels hold nothing quadratic, only the tokens.
    const uint64_t attention = math ? 2 * 4 * rows * static_cast<uint64_t>(c.num_attention_heads) *
                                          ((tokens + shards - 1) / shards) * tokens
                                    : 8 * rows * tokens * static_cast<uint64_t>(c.inner_dim()) * 4;
    need = {attention, math ? "attention scores over " + std::to_string(tokens) + " tokens (the math path)"
                            : "the transformer's activations over " + std::to_string(tokens) + " tokens"};
  }
  if (request.output_type != OutputType::Latent && !vae_config_.block_out_channels.empty()) {
    // The decoder's last blocks run at full resolution with block_out_channels[0] channels, in float32
    // for GroupNorm: input and output of a convolution at once.
    const uint64_t decoder = 2 * 4 * rows * static_cast<uint64_t>(vae_config_.block_out_channels.front()) *
                             static_cast<uint64_t>(height) * static_cast<uint64_t>(width);
    if (decoder > need.bytes) need = {decoder, "the VAE decoder at full resolution"};
  }
  if (need.bytes > available)
    throw OutOfMemoryError("a " + std::to_string(height) + "x" + std::to_string(width) + " image needs at least " +
                format_bytes(need.bytes) + " on " + device.str() + " for " + need.what + ", but " +
                format_bytes(available) + " is available; ask for a smaller size" +
                (need.what.find("math") != std::string::npos ? " or run on a GPU with a fused attention backend" : ""));
}

at::Tensor FluxPipeline::draw_latents(const GenerateRequest& request, int64_t batch, int64_t height, int64_t width,
                                      const at::Generator& generator) {
  const int64_t channels = num_channels_latents_ * 4;
  const int64_t sequence = (height / vae_scale_factor_ / 2) * (width / vae_scale_factor_ / 2);
  const c10::Device device = has("transformer") ? execution_device("transformer") : device_;
  if (request.latents.defined()) {
    const auto& l = request.latents;
    if (l.dim() != 3 || l.size(0) != batch || l.size(1) != sequence || l.size(2) != channels)
      throw Error("latents have shape " + c10::str(l.sizes()) + " but this request needs packed latents [" +
                  std::to_string(batch) + ", " + std::to_string(sequence) + ", " + std::to_string(channels) +
                  "] (" + std::to_string(height) + "x" + std::to_string(width) + ")");
    return l.to(device, dtype_);
  }
  return prepare_latents(batch, num_channels_latents_, height, width, vae_scale_factor_, dtype_, device, generator);
}

at::Tensor FluxPipeline::denoise(const GenerateRequest& request, const PromptEmbeddings& embeddings,
                                 at::Tensor latents, int64_t height, int64_t width, const at::Generator& generator,
                                 bool& interrupted) {
  FluxTransformer2DModel model = transformer();
  Scheduler& steps = scheduler();
  const c10::Device device = latents.device();
  const int64_t batch = latents.size(0);

  const std::vector<double> sigmas = request.sigmas.value_or(flux_sigmas(request.num_inference_steps.value_or(28)));
  // As diffusers' FluxPipeline: the shift grows with the image's token count, with the scheduler
  // config's bounds (their defaults where the config has none).
  const nlohmann::json& config = steps.config();
  const double mu = calculate_shift(latents.size(1), config.value("base_image_seq_len", int64_t{256}),
                                    config.value("max_image_seq_len", int64_t{4096}), config.value("base_shift", 0.5),
                                    config.value("max_shift", 1.15));
  steps.set_timesteps(static_cast<int64_t>(sigmas.size()), {.mu = mu, .sigmas = sigmas});
  const at::Tensor timesteps = steps.timesteps();
  const int64_t num_steps = timesteps.size(0);

  FluxTransformerInputs inputs;
  inputs.encoder_hidden_states = embeddings.prompt_embeds.to(device, dtype_);
  inputs.pooled_projections = embeddings.pooled_prompt_embeds.to(device, dtype_);
  inputs.txt_ids = embeddings.text_ids.to(device, dtype_);
  inputs.img_ids = prepare_latent_image_ids(height / vae_scale_factor_ / 2, width / vae_scale_factor_ / 2)
                       .to(device, dtype_);
  if (model->config().guidance_embeds)
    inputs.guidance = at::full({batch}, request.guidance_scale.value_or(3.5), at::TensorOptions().dtype(at::kFloat).device(device));

  const bool show_progress = request.progress.value_or(isatty(STDERR_FILENO) == 1);
  ProgressBar progress(num_steps, show_progress);
  at::NoGradGuard no_grad;
  const auto running = on_device_while_running("transformer");
  // On CUDA each stream's q/k/v run as one GEMM (diffusers' fuse_qkv_projections; no extra memory).
  // Here, once the weights are where the loop runs them and before any graph is captured; a no-op
  // when already fused. Placements that move weights during the call keep three products.
  if (runs_in_place_on_cuda("transformer")) model->fuse_qkv_projections();
  // The latents and the timestep change each step; the other inputs are read where they are.
  CudaGraphCall denoise(
      [&](const std::vector<at::Tensor>& in) {
        FluxTransformerInputs step = inputs;
        step.hidden_states = in[0];
        step.timestep = in[1];
        // Under a device map the last block may run on another GPU than the latents live on.
        return model->forward(step).to(device);
      },
      can_capture_cuda_graph("transformer"));
  for (int64_t i = 0; i < num_steps; ++i) {
    const at::Tensor t = timesteps[i];
    // diffusers: t.expand(batch).to(latents.dtype), divided by 1000 in that dtype.
    at::Tensor noise_pred = denoise({latents, t.expand({batch}).to(device, latents.scalar_type()) / 1000});
    latents = steps.step(noise_pred, t.item<double>(), latents, generator);
    progress.advance();
    if (request.callback &&
        !request.callback(StepInfo{i, num_steps, t.item<double>(), latents})) {
      interrupted = i + 1 < num_steps;
      break;
    }
  }
  return latents;
}

at::Tensor FluxPipeline::decode_latents(const at::Tensor& latents, int64_t height, int64_t width) {
  AutoencoderKL decoder = vae();
  at::NoGradGuard no_grad;
  const c10::Device device = execution_device("vae");
  const c10::ScalarType dtype = decoder->parameters().front().scalar_type();
  const auto running = on_device_while_running("vae");
  at::Tensor unpacked = unpack_latents(latents, height, width, vae_scale_factor_);
  at::Tensor scaled = unscale_latents(unpacked, decoder->config()).to(device, dtype);
  at::Tensor decoded = decoder->decode(scaled);
  // VaeImageProcessor.postprocess: denormalize [-1, 1] -> [0, 1].
  return (decoded.to(at::kFloat) / 2 + 0.5).clamp(0, 1);
}

GenerateOutput FluxPipeline::generate(const GenerateRequest& request) {
  const auto start = Clock::now();
  // ---- check the request before any model runs ---------------------------------------------------
  const int64_t num_inference_steps = request.num_inference_steps.value_or(28);
  check_common_request(request, num_inference_steps);
  const bool has_prompt = !request.prompt.empty();
  const bool has_embeds = request.prompt_embeds.defined();
  if (has_embeds != request.pooled_prompt_embeds.defined())
    throw Error("prompt_embeds and pooled_prompt_embeds go together: give both");
  if (!request.negative_prompt.empty() || request.negative_prompt_embeds.defined())
    throw Error("FluxPipeline takes no negative prompt (FLUX.1-dev's guidance is distilled into the model)");
  if (request.true_cfg_scale || request.prompt_embeds_mask.defined() || request.negative_prompt_embeds_mask.defined())
    throw Error("FluxPipeline takes no true_cfg_scale or prompt embedding masks (those are Qwen-Image's)");
  // Each side a multiple of vae_scale_factor * 2: the latents are packed in 2x2 patches.
  const int64_t multiple = vae_scale_factor_ * 2;
  const int64_t height =
      checked_image_size(request.height, default_sample_size * vae_scale_factor_, multiple, request.round_size, "height");
  const int64_t width =
      checked_image_size(request.width, default_sample_size * vae_scale_factor_, multiple, request.round_size, "width");
  check_memory_for(request, height, width);

  if (has_embeds) {
    const auto& pe = request.prompt_embeds;
    const auto& pooled = request.pooled_prompt_embeds;
    if (pe.dim() != 3 || pe.size(2) != transformer_config_.joint_attention_dim)
      throw Error("prompt_embeds have shape " + c10::str(pe.sizes()) + "; expected [batch, sequence, " +
                  std::to_string(transformer_config_.joint_attention_dim) + "]");
    if (pooled.dim() != 2 || pooled.size(1) != transformer_config_.pooled_projection_dim || pooled.size(0) != pe.size(0))
      throw Error("pooled_prompt_embeds have shape " + c10::str(pooled.sizes()) + "; expected [" +
                  std::to_string(pe.size(0)) + ", " + std::to_string(transformer_config_.pooled_projection_dim) + "]");
  }

  GenerateOutput out;
  out.height = height;
  out.width = width;

  // ---- encode --------------------------------------------------------------------------------------
  auto stage = Clock::now();
  PromptEmbeddings embeddings;
  if (has_prompt) {
    embeddings = encode_prompt({.prompt = request.prompt,
                                .prompt_2 = request.prompt_2,
                                .num_images_per_prompt = request.num_images_per_prompt,
                                .max_sequence_length = request.max_sequence_length});
  } else {
    embeddings.prompt_embeds = repeat_rows(request.prompt_embeds, request.num_images_per_prompt);
    embeddings.pooled_prompt_embeds = repeat_rows(request.pooled_prompt_embeds, request.num_images_per_prompt);
    embeddings.text_ids = at::zeros({request.prompt_embeds.size(1), 3}, at::TensorOptions().dtype(dtype_));
  }
  out.times.encode_seconds = seconds_since(stage);

  // ---- denoise -------------------------------------------------------------------------------------
  stage = Clock::now();
  const int64_t batch = embeddings.prompt_embeds.size(0);
  const at::Generator generator = request_generator(request, parallel_world_);
  at::Tensor latents = draw_latents(request, batch, height, width, generator);
  out.latents = denoise(request, embeddings, latents, height, width, generator, out.interrupted);
  out.times.denoise_seconds = seconds_since(stage);

  // ---- decode --------------------------------------------------------------------------------------
  // Under context parallelism every rank holds the same latents; rank 0 alone makes the image.
  if (request.output_type != OutputType::Latent && parallel_rank() == 0) {
    stage = Clock::now();
    out.image_tensor = decode_latents(out.latents, height, width).to(at::kCPU);
    if (request.output_type == OutputType::Image) out.images = images_from_tensor(out.image_tensor);
    out.times.decode_seconds = seconds_since(stage);
  }
  out.times.total_seconds = seconds_since(start);
  return out;
}

}  // namespace diffuse
