#include "diffuse/pipelines/qwenimage_pipeline.hpp"

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
#include "diffuse/pipelines/guidance.hpp"
#include "diffuse/pipelines/progress_bar.hpp"
#include "diffuse/placement/device_memory.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"
#include "diffuse/tokenizers/qwen2_tokenizer.hpp"
#include "log.hpp"
#include "pipeline_support.hpp"

namespace diffuse {
namespace {

constexpr int64_t kDefaultSteps = 50;
constexpr double kDefaultTrueCfgScale = 4.0;

// The negative prompts for `batch` prompts: one given for all, or one per prompt.
std::vector<std::string> negative_prompts(const PromptList& negative, size_t batch) {
  if (negative.size() == 1) return std::vector<std::string>(batch, negative.items().front());
  if (negative.size() != batch)
    throw Error("negative_prompt has " + std::to_string(negative.size()) + " entries but prompt has " +
                std::to_string(batch) + "; give one negative prompt, or one per prompt");
  return negative.items();
}

// diffusers' encode_prompt after the encoder: cut to max_sequence_length, repeat per image, and no mask
// where every position is valid.
void finish_embeddings(at::Tensor& embeds, at::Tensor& mask, int64_t max_sequence_length, int64_t images) {
  embeds = repeat_rows(embeds.slice(1, 0, max_sequence_length), images);
  if (!mask.defined()) return;
  mask = repeat_rows(mask.slice(1, 0, max_sequence_length), images);
  if (mask.all().item<bool>()) mask = at::Tensor();
}

// Checks user-given embeddings (and mask) against the transformer's text width.
void check_embeddings(const char* name, const at::Tensor& embeds, const at::Tensor& mask, int64_t width) {
  if (embeds.dim() != 3 || embeds.size(2) != width)
    throw Error(std::string(name) + " have shape " + c10::str(embeds.sizes()) + "; expected [batch, tokens, " +
                std::to_string(width) + "]");
  if (mask.defined() && (mask.dim() != 2 || mask.size(0) != embeds.size(0) || mask.size(1) != embeds.size(1)))
    throw Error(std::string(name) + "_mask has shape " + c10::str(mask.sizes()) + " but " + name + " " +
                c10::str(embeds.sizes()) + "; expected [" + std::to_string(embeds.size(0)) + ", " +
                std::to_string(embeds.size(1)) + "]");
}

}  // namespace

const PipelineSpec& QwenImagePipeline::pipeline_spec() {
  static const PipelineSpec spec{
      .class_name = "QwenImagePipeline",
      .components = {{"scheduler", {"FlowMatchEulerDiscreteScheduler"}},
                     {"text_encoder", {"Qwen2_5_VLForConditionalGeneration"}},
                     {"tokenizer", {"Qwen2Tokenizer", "Qwen2TokenizerFast"}},
                     {"transformer", {"QwenImageTransformer2DModel"}},
                     {"vae", {"AutoencoderKLQwenImage"}}},
      .model_cpu_offload_seq = {"text_encoder", "transformer", "vae"},
      .tokenizer_encoders = {{"tokenizer", "text_encoder"}},
  };
  return spec;
}

const std::string& QwenImagePipeline::prompt_template() {
  static const std::string kTemplate =
      "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
      "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
      "<|im_start|>assistant\n";
  return kTemplate;
}

QwenImagePipeline QwenImagePipeline::from_pretrained(const std::filesystem::path& folder, PipelineOptions options) {
  QwenImagePipeline pipe;
  pipe.load_components(folder, options);
  // Configs are read even for skipped models: latent shapes need them.
  pipe.vae_config_ = pipe.has("vae") ? pipe.vae()->config()
                                     : AutoencoderKLQwenImageConfig::from_file(pipe.component_folder("vae") / "config.json");
  pipe.transformer_config_ =
      pipe.has("transformer") ? pipe.transformer()->config()
                              : QwenImageTransformerConfig::from_file(pipe.component_folder("transformer") / "config.json");
  pipe.vae_scale_factor_ = pipe.vae_config_.vae_scale_factor();
  pipe.num_channels_latents_ = pipe.transformer_config_.in_channels / 4;
  if (pipe.has("transformer"))
    pipe.transformer()->set_attention_backend(parse_attention_backend(options.attention_backend));
  pipe.enable_parallelism_from(options);
  return pipe;
}

PipelineInfo QwenImagePipeline::info() const {
  return {.class_name = class_name(),
          .vae_scale_factor = vae_scale_factor_,
          .size_multiple = vae_scale_factor_ * 2,
          .default_height = default_sample_size * vae_scale_factor_,
          .default_width = default_sample_size * vae_scale_factor_,
          .default_steps = kDefaultSteps,
          .default_guidance_scale = kDefaultTrueCfgScale,
          .num_channels_latents = num_channels_latents_,
          .packed_latents = true,
          .uses_negative_prompt = true,
          .empty_negative_prompt = false,  // true CFG runs only with a given negative prompt
          .true_cfg = true,
          .default_true_cfg_scale = kDefaultTrueCfgScale,
          .scheduler = has("scheduler") ? components_.get<Scheduler>("scheduler").class_name() : ""};
}

void QwenImagePipeline::check_parallel_config(const ParallelConfig& config) const {
  // Both dimensions are supported; the Ulysses degree is checked against the heads before the mesh's
  // collectives.
  if (config.splits_context())
    config.context().validate(config.context_degree(), transformer_config_.num_attention_heads);
}

void QwenImagePipeline::enable_context_parallelism(const ContextParallelConfig& config,
                                                   std::shared_ptr<Communicator> group) {
  transformer()->enable_parallelism(config, std::move(group));
}

void QwenImagePipeline::disable_context_parallelism() {
  if (has("transformer")) transformer()->disable_parallelism();
}

QwenImageTransformer2DModel QwenImagePipeline::transformer() const {
  return require_model<QwenImageTransformer2DModel>("transformer", "denoising");
}
AutoencoderKLQwenImage QwenImagePipeline::vae() const {
  return require_model<AutoencoderKLQwenImage>("vae", "decoding latents");
}
Qwen2_5_VLTextModel QwenImagePipeline::text_encoder() const {
  return require_model<Qwen2_5_VLTextModel>("text_encoder", "encoding a prompt");
}

std::pair<at::Tensor, at::Tensor> QwenImagePipeline::encode_texts(const std::vector<std::string>& prompts) {
  auto& tokenizer = require_object<Qwen2Tokenizer>("tokenizer", "encoding a prompt");
  Qwen2_5_VLTextModel encoder = text_encoder();
  std::vector<std::string> texts;
  texts.reserve(prompts.size());
  const std::string& tmpl = prompt_template();
  const size_t slot = tmpl.find("{}");
  for (const std::string& p : prompts) texts.push_back(tmpl.substr(0, slot) + p + tmpl.substr(slot + 2));

  at::NoGradGuard no_grad;
  const c10::Device device = execution_device("text_encoder");
  const auto running = on_device_while_running("text_encoder");
  // Padded to the longest and cut at 1024 tokens past the template's dropped part, as diffusers asks.
  const Qwen2Tokenizer::Batch tokens =
      tokenizer.encode_batch(texts, max_sequence_length_limit + prompt_template_start_index);
  const at::Tensor hidden = encoder->forward(tokens.input_ids.to(device), tokens.attention_mask.to(device));
  // Each row's valid positions, past the template's first ones; then padded with zeros to the longest.
  const at::Tensor valid = tokens.attention_mask.to(at::kBool);
  std::vector<at::Tensor> rows;
  int64_t longest = 0;
  for (int64_t b = 0; b < hidden.size(0); ++b) {
    const at::Tensor index = valid[b].nonzero().flatten().to(hidden.device());
    at::Tensor row = hidden[b].index_select(0, index);
    row = row.slice(0, std::min<int64_t>(prompt_template_start_index, row.size(0)));
    longest = std::max(longest, row.size(0));
    rows.push_back(row);
  }
  at::Tensor embeds = at::zeros({hidden.size(0), longest, hidden.size(2)}, hidden.options());
  at::Tensor mask = at::zeros({hidden.size(0), longest}, at::TensorOptions().dtype(at::kLong).device(hidden.device()));
  for (size_t b = 0; b < rows.size(); ++b) {
    const int64_t n = rows[b].size(0);
    embeds[static_cast<int64_t>(b)].slice(0, 0, n).copy_(rows[b]);
    mask[static_cast<int64_t>(b)].slice(0, 0, n).fill_(1);
  }
  return {embeds.to(dtype_), mask};
}

PromptEmbeddings QwenImagePipeline::encode_prompt(const EncodeRequest& request) {
  const std::vector<std::string>& prompts = request.prompt.items();
  if (prompts.empty()) throw Error("encode_prompt: the prompt list is empty");
  if (request.num_images_per_prompt < 1)
    throw Error("num_images_per_prompt must be at least 1, got " + std::to_string(request.num_images_per_prompt));
  if (request.max_sequence_length < 1 || request.max_sequence_length > max_sequence_length_limit)
    throw Error("max_sequence_length must be in [1, 1024], got " + std::to_string(request.max_sequence_length));
  PromptEmbeddings out;
  std::tie(out.prompt_embeds, out.prompt_embeds_mask) = encode_texts(prompts);
  finish_embeddings(out.prompt_embeds, out.prompt_embeds_mask, request.max_sequence_length,
                    request.num_images_per_prompt);
  if (request.do_classifier_free_guidance) {
    std::tie(out.negative_prompt_embeds, out.negative_prompt_embeds_mask) =
        encode_texts(negative_prompts(request.negative_prompt.empty() ? PromptList("") : request.negative_prompt,
                                      prompts.size()));
    finish_embeddings(out.negative_prompt_embeds, out.negative_prompt_embeds_mask, request.max_sequence_length,
                      request.num_images_per_prompt);
  }
  return out;
}

at::Tensor QwenImagePipeline::decode_latents(const at::Tensor& latents, int64_t height, int64_t width) {
  AutoencoderKLQwenImage decoder = vae();
  const int64_t channels = vae_config_.z_dim * 4;
  const int64_t tokens = (height / vae_scale_factor_ / 2) * (width / vae_scale_factor_ / 2);
  if (latents.dim() != 3 || latents.size(1) != tokens || latents.size(2) != channels)
    throw Error("decode_latents: expected packed latents [batch, " + std::to_string(tokens) + ", " +
                std::to_string(channels) + "] for a " + std::to_string(height) + "x" + std::to_string(width) +
                " image, got " + c10::str(latents.sizes()));
  at::NoGradGuard no_grad;
  const c10::Device device = execution_device("vae");
  const c10::ScalarType dtype = decoder->parameters().front().scalar_type();
  const auto running = on_device_while_running("vae");
  // [B, C, h, w] -> one frame [B, C, 1, h, w], denormalized as the pipeline does before decoding.
  const at::Tensor frame = unpack_latents(latents, height, width, vae_scale_factor_).unsqueeze(2);
  const at::Tensor z = unscale_latents(frame.to(device, dtype), decoder->config());
  const at::Tensor decoded = decoder->decode(z).select(2, 0);
  // VaeImageProcessor.postprocess: denormalize [-1, 1] -> [0, 1].
  return (decoded.to(at::kFloat) / 2 + 0.5).clamp(0, 1);
}

// The largest activations of a request, estimated from the shapes alone, against the memory of the
// device that holds them, so that an absurd size is refused before any work.
void QwenImagePipeline::check_memory_for(const GenerateRequest& request, int64_t rows, int64_t height,
                                         int64_t width) {
  const c10::Device device = has("transformer") ? execution_device("transformer") : device_;
  const uint64_t available = available_memory(device.str());
  if (available == 0) return;  // unknown
  const auto r = static_cast<uint64_t>(rows);
  const uint64_t tokens = static_cast<uint64_t>((height / vae_scale_factor_ / 2) * (width / vae_scale_factor_ / 2) +
                                                request.max_sequence_length);
  uint64_t need = 0;
  std::string what;
  if (has("transformer")) {
    const QwenImageTransformerConfig& c = transformer_config_;
    const at::Tensor probe = at::empty({1, 1, 1, c.attention_head_dim}, at::TensorOptions(dtype_).device(device));
    const bool math = resolve_attention_backend(transformer()->attention_backend(), probe) == AttentionBackend::math;
    const auto shards = static_cast<uint64_t>(context_parallel_degree());
    // Math attention holds float32 scores and probabilities for every (query, key) pair of a head's
    // shard; fused kernels hold nothing quadratic, only the tokens.
    need = math ? 2 * 4 * r * static_cast<uint64_t>(c.num_attention_heads) * ((tokens + shards - 1) / shards) * tokens
                : 8 * r * tokens * static_cast<uint64_t>(c.inner_dim()) * 4;
    what = math ? "attention scores over " + std::to_string(tokens) + " tokens (the math path)"
                : "the transformer's activations over " + std::to_string(tokens) + " tokens";
  }
  if (request.output_type != OutputType::Latent) {
    // The decoder's last blocks run at full resolution with base_dim channels: a convolution's input
    // and output at once, in float32, plus the causal cache of the previous frame.
    const uint64_t decoder = 3 * 4 * static_cast<uint64_t>(std::max<int64_t>(request.num_images_per_prompt, 1)) *
                             static_cast<uint64_t>(vae_config_.base_dim) * static_cast<uint64_t>(height) *
                             static_cast<uint64_t>(width);
    if (decoder > need) need = decoder, what = "the VAE decoder at full resolution";
  }
  if (need > available)
    throw OutOfMemoryError("a " + std::to_string(height) + "x" + std::to_string(width) + " image needs at least " +
                format_bytes(need) + " on " + device.str() + " for " + what + ", but " + format_bytes(available) +
                " is available; ask for a smaller size" +
                (what.find("math") != std::string::npos ? " or run on a GPU with a fused attention backend" : ""));
}

at::Tensor QwenImagePipeline::denoise(const GenerateRequest& request, const PromptEmbeddings& embeddings,
                                      at::Tensor latents, int64_t height, int64_t width, double true_cfg_scale,
                                      const at::Generator& generator, const std::shared_ptr<Communicator>& cfg_group,
                                      bool& interrupted) {
  QwenImageTransformer2DModel model = transformer();
  Scheduler& steps = scheduler();
  const c10::Device device = latents.device();
  const int64_t batch = latents.size(0);
  const bool true_cfg = embeddings.negative_prompt_embeds.defined();
  // CFG parallelism: this rank runs one of the two calls, the negative one on cfg index 0 (each with its
  // own text length and mask), and one exchange per step gives it the other.
  const bool split = true_cfg && cfg_group != nullptr;
  const bool run_positive = !split || cfg_group->rank() == 1;
  const bool run_negative = true_cfg && (!split || cfg_group->rank() == 0);

  const std::vector<double> sigmas = request.sigmas.value_or(flux_sigmas(request.num_inference_steps.value_or(kDefaultSteps)));
  // As diffusers' QwenImagePipeline: the shift grows with the image's token count, with the scheduler
  // config's bounds (their defaults where the config has none).
  const nlohmann::json& config = steps.config();
  const double mu = calculate_shift(latents.size(1), config.value("base_image_seq_len", int64_t{256}),
                                    config.value("max_image_seq_len", int64_t{4096}), config.value("base_shift", 0.5),
                                    config.value("max_shift", 1.15));
  steps.set_timesteps(static_cast<int64_t>(sigmas.size()), {.mu = mu, .sigmas = sigmas});
  const at::Tensor timesteps = steps.timesteps();
  const int64_t num_steps = timesteps.size(0);

  // One frame of (h/2) x (w/2) patches per image.
  const std::vector<std::vector<QwenImageShape>> img_shapes(
      static_cast<size_t>(batch), {QwenImageShape{1, height / vae_scale_factor_ / 2, width / vae_scale_factor_ / 2}});
  QwenImageTransformerInputs cond, uncond;
  // The masks stay on the CPU: the transformer reads them on the host, and one on the device would
  // make every call wait for it (which a CUDA graph cannot capture).
  cond.encoder_hidden_states = embeddings.prompt_embeds.to(device, dtype_);
  if (embeddings.prompt_embeds_mask.defined())
    cond.encoder_hidden_states_mask = embeddings.prompt_embeds_mask.to(at::kCPU);
  cond.img_shapes = img_shapes;
  if (true_cfg) {
    uncond.encoder_hidden_states = embeddings.negative_prompt_embeds.to(device, dtype_);
    if (embeddings.negative_prompt_embeds_mask.defined())
      uncond.encoder_hidden_states_mask = embeddings.negative_prompt_embeds_mask.to(at::kCPU);
    uncond.img_shapes = img_shapes;
  }
  // diffusers builds no guidance embedder for Qwen-Image (guidance_embeds changes nothing either).
  if (request.guidance_scale)
    DIFFUSE_LOG_WARN("guidance_scale {} is ignored: this transformer is not guidance-distilled (use true_cfg_scale "
                     "with a negative prompt)",
                     *request.guidance_scale);

  const bool show_progress = request.progress.value_or(isatty(STDERR_FILENO) == 1);
  ProgressBar progress(num_steps, show_progress);
  at::NoGradGuard no_grad;
  const auto running = on_device_while_running("transformer");
  // Each stream's q/k/v as one GEMM on CUDA, before any graph is captured (as FluxPipeline::denoise).
  if (runs_in_place_on_cuda("transformer")) model->fuse_qkv_projections();
  // Each pass replays its own CUDA graph (models/graph_call.hpp): the latents and the timestep change
  // each step, as graph inputs; the text embeddings and mask are the pass's own for the whole loop and
  // are read where they are (the key padding made from the mask is baked into the captured graph, so a
  // graph is never shared between the two passes, whose text lengths and masks differ).
  const bool graphs = can_capture_cuda_graph("transformer");
  auto pass = [&model, &device](const QwenImageTransformerInputs& inputs) {
    return [&model, &device, &inputs](const std::vector<at::Tensor>& in) {
      QwenImageTransformerInputs step = inputs;
      step.hidden_states = in[0];
      step.timestep = in[1];
      // Under a device map the last block may run on another GPU than the latents live on.
      return model->forward(step).to(device);
    };
  };
  // The rotary rows and key padding each graph reads, held here for longer than the graphs live (the
  // model's cache of them is bounded); the first calls find them made.
  std::vector<QwenImageCallTables> graph_tables;
  auto tables_of = [&](QwenImageTransformerInputs inputs) {
    inputs.hidden_states = latents;
    inputs.timestep = at::zeros({batch}, latents.options());
    return model->call_tables(inputs);
  };
  if (graphs && run_positive) graph_tables.push_back(tables_of(cond));
  if (graphs && run_negative) graph_tables.push_back(tables_of(uncond));
  CudaGraphCall positive_pass(pass(cond), graphs && run_positive);
  CudaGraphCall negative_pass(pass(uncond), graphs && run_negative);
  for (int64_t i = 0; i < num_steps; ++i) {
    const at::Tensor t = timesteps[i];
    // diffusers: t.expand(batch).to(latents.dtype), divided by 1000 in that dtype.
    const at::Tensor timestep = t.expand({batch}).to(device, latents.scalar_type()) / 1000;
    at::Tensor noise_pred, negative;
    if (run_positive) noise_pred = positive_pass({latents, timestep});
    if (run_negative) negative = negative_pass({latents, timestep});
    if (split) std::tie(negative, noise_pred) = exchange_guidance_halves(*cfg_group, run_positive ? noise_pred : negative);
    if (true_cfg) noise_pred = true_classifier_free_guidance(negative, noise_pred, true_cfg_scale);
    latents = steps.step(noise_pred, t.item<double>(), latents, generator);
    progress.advance();
    if (request.callback && !request.callback(StepInfo{i, num_steps, t.item<double>(), latents})) {
      interrupted = i + 1 < num_steps;
      break;
    }
  }
  return latents;
}

GenerateOutput QwenImagePipeline::generate(const GenerateRequest& request) {
  const auto start = Clock::now();
  // ---- check the request before any model runs ---------------------------------------------------
  const int64_t num_inference_steps = request.num_inference_steps.value_or(kDefaultSteps);
  check_common_request(request, num_inference_steps);
  if (!request.prompt_2.empty() || request.pooled_prompt_embeds.defined())
    throw Error("QwenImagePipeline takes no prompt_2 or pooled_prompt_embeds (those are FLUX.1's)");
  if (request.max_sequence_length < 1 || request.max_sequence_length > max_sequence_length_limit)
    throw Error("max_sequence_length must be in [1, 1024], got " + std::to_string(request.max_sequence_length));
  if (!request.negative_prompt.empty() && request.negative_prompt_embeds.defined())
    throw Error("give negative_prompt or negative_prompt_embeds, not both");
  if (request.prompt_embeds_mask.defined() && !request.prompt_embeds.defined())
    throw Error("prompt_embeds_mask goes with prompt_embeds");
  if (request.negative_prompt_embeds_mask.defined() && !request.negative_prompt_embeds.defined())
    throw Error("negative_prompt_embeds_mask goes with negative_prompt_embeds");
  // Each side a multiple of vae_scale_factor * 2: the latents are packed in 2x2 patches.
  const int64_t multiple = vae_scale_factor_ * 2;
  const int64_t height =
      checked_image_size(request.height, default_sample_size * vae_scale_factor_, multiple, request.round_size, "height");
  const int64_t width =
      checked_image_size(request.width, default_sample_size * vae_scale_factor_, multiple, request.round_size, "width");

  const double true_cfg_scale = request.true_cfg_scale.value_or(kDefaultTrueCfgScale);
  const bool has_negative = !request.negative_prompt.empty() || request.negative_prompt_embeds.defined();
  if (true_cfg_scale > 1 && !has_negative && request.true_cfg_scale)
    DIFFUSE_LOG_WARN("true_cfg_scale is {}, but true CFG runs only with a negative prompt; none was given",
                     true_cfg_scale);
  else if (true_cfg_scale <= 1 && has_negative)
    DIFFUSE_LOG_WARN("a negative prompt is given but true CFG does not run: true_cfg_scale {} is not above 1",
                     true_cfg_scale);
  const bool do_true_cfg = true_cfg_scale > 1 && has_negative;

  const bool has_prompt = !request.prompt.empty();
  const int64_t width_text = transformer_config_.joint_attention_dim;
  if (!has_prompt) check_embeddings("prompt_embeds", request.prompt_embeds, request.prompt_embeds_mask, width_text);
  if (request.negative_prompt_embeds.defined()) {
    check_embeddings("negative_prompt_embeds", request.negative_prompt_embeds, request.negative_prompt_embeds_mask,
                     width_text);
    const int64_t prompts = has_prompt ? static_cast<int64_t>(request.prompt.size()) : request.prompt_embeds.size(0);
    if (request.negative_prompt_embeds.size(0) != prompts)
      throw Error("negative_prompt_embeds have " + std::to_string(request.negative_prompt_embeds.size(0)) +
                  " rows but there are " + std::to_string(prompts) + " prompts");
  }
  const int64_t batch =
      (has_prompt ? static_cast<int64_t>(request.prompt.size()) : request.prompt_embeds.size(0)) *
      request.num_images_per_prompt;
  check_memory_for(request, batch, height, width);

  GenerateOutput out;
  out.height = height;
  out.width = width;

  // ---- encode --------------------------------------------------------------------------------------
  auto stage = Clock::now();
  PromptEmbeddings embeddings;
  const int64_t images = request.num_images_per_prompt;
  if (has_prompt) {
    embeddings = encode_prompt({.prompt = request.prompt,
                                .negative_prompt = request.negative_prompt,
                                .do_classifier_free_guidance = do_true_cfg && !request.negative_prompt_embeds.defined(),
                                .num_images_per_prompt = images,
                                .max_sequence_length = request.max_sequence_length});
  } else {
    embeddings.prompt_embeds = request.prompt_embeds;
    embeddings.prompt_embeds_mask = request.prompt_embeds_mask;
    finish_embeddings(embeddings.prompt_embeds, embeddings.prompt_embeds_mask, request.max_sequence_length, images);
    if (do_true_cfg && !request.negative_prompt.empty()) {
      const std::vector<std::string> negatives =
          negative_prompts(request.negative_prompt, static_cast<size_t>(request.prompt_embeds.size(0)));
      std::tie(embeddings.negative_prompt_embeds, embeddings.negative_prompt_embeds_mask) = encode_texts(negatives);
      finish_embeddings(embeddings.negative_prompt_embeds, embeddings.negative_prompt_embeds_mask,
                        request.max_sequence_length, images);
    }
  }
  if (do_true_cfg && request.negative_prompt_embeds.defined()) {
    embeddings.negative_prompt_embeds = request.negative_prompt_embeds;
    embeddings.negative_prompt_embeds_mask = request.negative_prompt_embeds_mask;
    finish_embeddings(embeddings.negative_prompt_embeds, embeddings.negative_prompt_embeds_mask,
                      request.max_sequence_length, images);
  }
  if (!do_true_cfg) embeddings.negative_prompt_embeds = at::Tensor();
  out.times.encode_seconds = seconds_since(stage);

  // ---- denoise -------------------------------------------------------------------------------------
  stage = Clock::now();
  const at::Generator generator = request_generator(request, parallel_world_);
  const c10::Device device = has("transformer") ? execution_device("transformer") : device_;
  const int64_t sequence = (height / vae_scale_factor_ / 2) * (width / vae_scale_factor_ / 2);
  at::Tensor latents;
  if (request.latents.defined()) {
    const auto& l = request.latents;
    if (l.dim() != 3 || l.size(0) != batch || l.size(1) != sequence || l.size(2) != num_channels_latents_ * 4)
      throw Error("latents have shape " + c10::str(l.sizes()) + " but this request needs packed latents [" +
                  std::to_string(batch) + ", " + std::to_string(sequence) + ", " +
                  std::to_string(num_channels_latents_ * 4) + "] (" + std::to_string(height) + "x" +
                  std::to_string(width) + ")");
    latents = l.to(device, dtype_);
  } else {
    // diffusers draws [B, 1, C, h, w] and packs it: the same numbers as FLUX.1's [B, C, h, w].
    latents = prepare_latents(batch, num_channels_latents_, height, width, vae_scale_factor_, dtype_, device, generator);
  }
  const std::shared_ptr<Communicator> cfg_group = cfg_group_for_call(
      do_true_cfg, true_cfg_scale <= 1 ? "true_cfg_scale " + c10::str(true_cfg_scale) + " is not above 1"
                                       : std::string("no negative prompt is given (true CFG needs one)"));
  out.latents =
      denoise(request, embeddings, latents, height, width, true_cfg_scale, generator, cfg_group, out.interrupted);
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
