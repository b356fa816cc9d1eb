#include "diffuse/pipelines/random_pipeline.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/models/t5_encoder.hpp"
#include "diffuse/models/unet_2d_condition.hpp"
#include "diffuse/io/json_config.hpp"
#include "io/atomic_file.hpp"
#include "log.hpp"
#include "random_pipeline_support.hpp"
#include "tokenizers/byte_level_bpe.hpp"
#include "tokenizers/sentencepiece_model.hpp"

namespace diffuse {
namespace random_detail {

void write_json(const std::filesystem::path& path, const nlohmann::json& value) {
  write_file_atomically(path, [&](std::ostream& out) { out << value.dump(2) << "\n"; });
}

void write_weights(torch::nn::Module& module, const std::filesystem::path& folder, const std::string& base_name,
                   const RandomPipelineOptions& options, uint64_t seed) {
  init_random_parameters(module, seed);
  save_weights(module, folder, base_name, options);
}

void save_weights(torch::nn::Module& module, const std::filesystem::path& folder, const std::string& base_name,
                  const RandomPipelineOptions& options) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) tensors.emplace_back(item.key(), item.value());
  save_checkpoint(folder, base_name, tensors, options.max_shard_bytes);
}

}  // namespace random_detail

namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using namespace random_detail;


json clip_config_json(const ClipTextConfig& c) {
  return {{"architectures", {"CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"projection_dim", c.projection_dim},
          {"num_hidden_layers", c.num_hidden_layers},
          {"num_attention_heads", c.num_attention_heads},
          {"max_position_embeddings", c.max_position_embeddings},
          {"hidden_act", c.hidden_act},
          {"layer_norm_eps", c.layer_norm_eps},
          {"pad_token_id", c.pad_token_id},
          {"bos_token_id", c.bos_token_id},
          {"eos_token_id", c.eos_token_id}};
}

json t5_config_json(const T5Config& c) {
  return {{"architectures", {"T5EncoderModel"}},
          {"model_type", "t5"},
          {"vocab_size", c.vocab_size},
          {"d_model", c.d_model},
          {"d_kv", c.d_kv},
          {"d_ff", c.d_ff},
          {"num_layers", c.num_layers},
          {"num_heads", c.num_heads},
          {"relative_attention_num_buckets", c.relative_attention_num_buckets},
          {"relative_attention_max_distance", c.relative_attention_max_distance},
          {"layer_norm_epsilon", c.layer_norm_epsilon},
          {"feed_forward_proj", c.feed_forward_proj},
          {"is_encoder_decoder", false},
          {"pad_token_id", c.pad_token_id},
          {"eos_token_id", c.eos_token_id}};
}

json transformer_config_json(const FluxTransformerConfig& c) {
  return {{"_class_name", "FluxTransformer2DModel"},
          {"patch_size", c.patch_size},
          {"in_channels", c.in_channels},
          {"out_channels", nullptr},
          {"num_layers", c.num_layers},
          {"num_single_layers", c.num_single_layers},
          {"attention_head_dim", c.attention_head_dim},
          {"num_attention_heads", c.num_attention_heads},
          {"joint_attention_dim", c.joint_attention_dim},
          {"pooled_projection_dim", c.pooled_projection_dim},
          {"guidance_embeds", c.guidance_embeds},
          {"axes_dims_rope", c.axes_dims_rope}};
}

json vae_config_json(const AutoencoderKLConfig& c) {
  return {{"_class_name", "AutoencoderKL"},
          {"in_channels", c.in_channels},
          {"out_channels", c.out_channels},
          {"down_block_types", c.down_block_types},
          {"up_block_types", c.up_block_types},
          {"block_out_channels", c.block_out_channels},
          {"layers_per_block", c.layers_per_block},
          {"act_fn", c.act_fn},
          {"latent_channels", c.latent_channels},
          {"norm_num_groups", c.norm_num_groups},
          {"sample_size", c.sample_size},
          {"scaling_factor", c.scaling_factor},
          {"shift_factor", c.shift_factor ? json(*c.shift_factor) : json(nullptr)},
          {"force_upcast", c.force_upcast},
          {"use_quant_conv", c.use_quant_conv},
          {"use_post_quant_conv", c.use_post_quant_conv},
          {"mid_block_add_attention", c.mid_block_add_attention}};
}

json scheduler_config_json(const FlowMatchEulerDiscreteSchedulerConfig& c) {
  return {{"_class_name", "FlowMatchEulerDiscreteScheduler"},
          {"num_train_timesteps", c.num_train_timesteps},
          {"shift", c.shift},
          {"use_dynamic_shifting", c.use_dynamic_shifting},
          {"base_shift", c.base_shift},
          {"max_shift", c.max_shift},
          {"base_image_seq_len", c.base_image_seq_len},
          {"max_image_seq_len", c.max_image_seq_len},
          {"invert_sigmas", c.invert_sigmas},
          {"shift_terminal", nullptr},
          {"use_karras_sigmas", false},
          {"use_exponential_sigmas", false},
          {"use_beta_sigmas", false},
          {"time_shift_type", c.time_shift_type},
          {"stochastic_sampling", false}};
}

// A CLIP vocabulary of single bytes (with and without the end-of-word mark) and no merges: every
// text tokenizes, one byte per token.
void write_clip_tokenizer(const fs::path& folder, const ClipTextConfig& config) {
  fs::create_directories(folder);
  json vocab = json::object();
  int64_t id = 0;
  for (const std::string& symbol : tokenizers::byte_level_alphabet()) vocab[symbol] = id++;
  for (const std::string& symbol : tokenizers::byte_level_alphabet()) vocab[symbol + "</w>"] = id++;
  vocab["<|startoftext|>"] = config.bos_token_id;
  vocab["<|endoftext|>"] = config.eos_token_id;
  write_json(folder / "vocab.json", vocab);
  write_file_atomically(folder / "merges.txt", [](std::ostream& out) { out << "#version: 0.2\n"; });
  write_json(folder / "tokenizer_config.json", {{"tokenizer_class", "CLIPTokenizer"},
                                                {"model_max_length", 77},
                                                {"bos_token", "<|startoftext|>"},
                                                {"eos_token", "<|endoftext|>"},
                                                {"pad_token", "<|endoftext|>"},
                                                {"unk_token", "<|endoftext|>"}});
}

// Words for a small SentencePiece vocabulary: whole words score far above spelling them out, and
// every printable ASCII character is a piece too, so any ASCII prompt tokenizes without <unk>.
const char* kVocabularyWords[] = {
    "a", "an", "the", "photo", "of", "cat", "dog", "with", "look", "like", "red", "blue", "green", "sky", "over",
    "mountain", "river", "city", "at", "night", "day", "painting", "portrait", "woman", "man", "child", "tree",
    "forest", "sea", "ocean", "boat", "car", "house", "garden", "flower", "sun", "moon", "star", "light", "dark",
    "bright", "small", "large", "old", "new", "cozy", "room", "window", "table", "book", "cup", "coffee", "tea",
    "bird", "fish", "horse", "astronaut", "riding", "on", "in", "and", "or", "to", "from", "under", "near",
    "beautiful", "detailed", "high", "quality", "cinematic", "soft", "warm", "cold", "snow", "rain", "winter",
    "summer", "spring", "autumn", "street", "road", "bridge", "castle", "robot", "dragon", "wizard", "hat",
    "glasses", "smiling", "sitting", "standing", "running", "flying", "watercolor", "oil", "sketch", "digital",
    "art", "style", "lens", "golden", "hour", "studio", "lighting", "sign", "that", "says", "hello", "world"};

// A unigram spiece.model as T5's is laid out: <pad> 0, </s> 1, <unk> 2, then the pieces.
void write_t5_tokenizer(const fs::path& folder, T5Config& config) {
  using tokenizers::SentencePieceModel;
  fs::create_directories(folder);
  SentencePieceModel model;
  model.unk_id = 2;
  model.pieces.push_back({"<pad>", 0.0f, SentencePieceModel::PieceType::Control});
  model.pieces.push_back({"</s>", 0.0f, SentencePieceModel::PieceType::Control});
  model.pieces.push_back({"<unk>", 0.0f, SentencePieceModel::PieceType::Unknown});
  const std::string word_start = "\xE2\x96\x81";  // U+2581, SentencePiece's space mark
  model.pieces.push_back({word_start, -3.0f, SentencePieceModel::PieceType::Normal});
  float score = -4.0f;
  for (const char* word : kVocabularyWords) {
    model.pieces.push_back({word_start + word, score, SentencePieceModel::PieceType::Normal});
    score -= 0.01f;
  }
  for (char c = '!'; c <= '~'; ++c) model.pieces.push_back({std::string(1, c), -10.0f, SentencePieceModel::PieceType::Normal});
  const std::string serialized = model.serialize();
  write_file_atomically(folder / "spiece.model", [&](std::ostream& out) { out << serialized; });
  const int64_t pieces = static_cast<int64_t>(model.pieces.size());
  config.vocab_size = pieces + 100;  // + transformers' 100 <extra_id_N>
  write_json(folder / "tokenizer_config.json", {{"tokenizer_class", "T5Tokenizer"},
                                                {"eos_token", "</s>"},
                                                {"pad_token", "<pad>"},
                                                {"unk_token", "<unk>"},
                                                {"extra_ids", 100},
                                                {"model_max_length", 512}});

  // The same model as the `tokenizers` library's JSON, which transformers' fast T5 tokenizer reads as it
  // is (converting spiece.model itself needs a precompiled_charsmap, which this model has none of).
  // Without a charsmap SentencePiece normalizes nothing, and runs of spaces vanish in the whitespace
  // split either way, so both files give the same ids.
  json vocab = json::array();
  for (const auto& piece : model.pieces) vocab.push_back({piece.text, piece.score});
  auto special = [](int64_t id, const std::string& content) {
    return json{{"id", id},           {"content", content}, {"single_word", false}, {"lstrip", false},
                {"rstrip", false},     {"normalized", false}, {"special", true}};
  };
  json added = json::array({special(0, "<pad>"), special(1, "</s>"), special(2, "<unk>")});
  // transformers numbers the extra ids downwards: <extra_id_99> comes first, right after the pieces.
  for (int64_t i = 0; i < 100; ++i) added.push_back(special(pieces + i, "<extra_id_" + std::to_string(99 - i) + ">"));
  json space_runs = {{"type", "Replace"}, {"pattern", {{"Regex", " {2,}"}}}, {"content", " "}};
  json metaspace = {{"type", "Metaspace"}, {"replacement", word_start}, {"prepend_scheme", "always"}, {"split", true}};
  json eos_template = {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}};
  json sequence_a = {{"Sequence", {{"id", "A"}, {"type_id", 0}}}};
  json sequence_b = {{"Sequence", {{"id", "B"}, {"type_id", 0}}}};
  write_json(folder / "tokenizer.json",
             {{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", {{"type", "Sequence"}, {"normalizers", json::array({space_runs})}}},
              {"pre_tokenizer",
               {{"type", "Sequence"}, {"pretokenizers", json::array({{{"type", "WhitespaceSplit"}}, metaspace})}}},
              {"post_processor",
               {{"type", "TemplateProcessing"},
                {"single", json::array({sequence_a, eos_template})},
                {"pair", json::array({sequence_a, eos_template, sequence_b, eos_template})},
                {"special_tokens", {{"</s>", {{"id", "</s>"}, {"ids", {1}}, {"tokens", {"</s>"}}}}}}}},
              {"decoder", metaspace},
              {"model", {{"type", "Unigram"}, {"unk_id", 2}, {"vocab", vocab}, {"byte_fallback", false}}}});
}

// T5 does not scale its attention scores by 1/sqrt(d_kv): its own initialization folds that into the
// query projections (standard deviation 1/sqrt(d_model * d_kv)), and so does this one. With 0.02
// everywhere, T5-XXL's scores would have a standard deviation of ~13 (q and k entries of ~1.3 over 64
// dimensions): nearly one-hot softmaxes whose winners bfloat16's rounding flips, so that two correct
// programs (or one program in bfloat16 and in float32) would disagree by O(1) on such a folder.
void write_t5_weights(const T5Config& config, const fs::path& folder, const RandomPipelineOptions& options,
                      uint64_t seed) {
  T5EncoderModel model(config, at::TensorOptions().dtype(options.dtype));
  init_random_parameters(*model, seed);
  const double query_std = 1.0 / std::sqrt(static_cast<double>(config.d_model * config.d_kv));
  // A stream of its own: `seed`'s would repeat the first parameters' draws (the embedding's) in q.
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x9E3779B97F4A7C15ULL);
  at::NoGradGuard no_grad;
  for (auto& item : model->named_parameters(/*recurse=*/true)) {
    at::Tensor& p = item.value();
    if (item.key().find("SelfAttention.q.weight") != std::string::npos)
      p.copy_(at::normal(0.0, query_std, p.sizes(), generator, at::TensorOptions().dtype(at::kFloat)));
  }
  save_weights(*model, folder, "model", options);
}

void copy_folder(const fs::path& from, const fs::path& to) {
  if (!fs::is_directory(from)) throw Error(from.string() + ": tokenizer folder to copy is missing");
  fs::create_directories(to);
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

// SD 1.5's UNet config as its published unet/config.json writes it, at a tiny or the real width.
json sd_unet_config_json(bool tiny) {
  return {{"_class_name", "UNet2DConditionModel"},
          {"act_fn", "silu"},
          {"attention_head_dim", tiny ? 2 : 8},  // diffusers' legacy name: the number of heads
          {"block_out_channels", tiny ? json{16, 32, 32, 32} : json{320, 640, 1280, 1280}},
          {"center_input_sample", false},
          {"cross_attention_dim", tiny ? 32 : 768},
          {"down_block_types", {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"}},
          {"downsample_padding", 1},
          {"flip_sin_to_cos", true},
          {"freq_shift", 0},
          {"in_channels", 4},
          {"layers_per_block", 2},
          {"mid_block_scale_factor", 1},
          {"norm_eps", 1e-05},
          {"norm_num_groups", tiny ? 8 : 32},
          {"out_channels", 4},
          {"sample_size", tiny ? 8 : 64},
          {"up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"}}};
}

// SD 1.5's scheduler_config.json (PNDM with skip_prk_steps, scaled_linear betas, "leading" spacing).
json sd_scheduler_config_json() {
  return {{"_class_name", "PNDMScheduler"},  {"beta_end", 0.012},           {"beta_schedule", "scaled_linear"},
          {"beta_start", 0.00085},           {"clip_sample", false},        {"num_train_timesteps", 1000},
          {"prediction_type", "epsilon"},    {"set_alpha_to_one", false},   {"skip_prk_steps", true},
          {"steps_offset", 1},               {"timestep_spacing", "leading"}, {"trained_betas", nullptr}};
}

void write_random_sd_pipeline(const fs::path& folder, const RandomPipelineOptions& options) {
  const bool tiny = options.shape == "sd15-tiny";
  ClipTextConfig clip;  // CLIP ViT-L/14's text tower, as SD 1.5's text_encoder
  clip.hidden_size = tiny ? 32 : 768, clip.intermediate_size = tiny ? 37 : 3072, clip.projection_dim = tiny ? 32 : 768;
  clip.num_hidden_layers = tiny ? 2 : 12, clip.num_attention_heads = tiny ? 4 : 12;
  AutoencoderKLConfig vae;
  vae.down_block_types = std::vector<std::string>(4, "DownEncoderBlock2D");
  vae.up_block_types = std::vector<std::string>(4, "UpDecoderBlock2D");
  vae.block_out_channels = tiny ? std::vector<int64_t>{8, 16, 16, 16} : std::vector<int64_t>{128, 256, 512, 512};
  vae.layers_per_block = tiny ? 1 : 2, vae.norm_num_groups = tiny ? 4 : 32, vae.sample_size = tiny ? 64 : 512;
  vae.scaling_factor = 0.18215;
  const json unet_json = sd_unet_config_json(tiny);

  fs::create_directories(folder);
  const at::TensorOptions tensor_options = at::TensorOptions().dtype(options.dtype);
  if (options.tokenizers_from)
    copy_folder(*options.tokenizers_from / "tokenizer", folder / "tokenizer");
  else
    write_clip_tokenizer(folder / "tokenizer", clip);
  write_json(folder / "model_index.json", {{"_class_name", "StableDiffusionPipeline"},
                                           {"_diffusers_version", "0.40.0.dev0"},
                                           {"feature_extractor", {nullptr, nullptr}},
                                           {"image_encoder", {nullptr, nullptr}},
                                           {"requires_safety_checker", false},
                                           {"safety_checker", {nullptr, nullptr}},
                                           {"scheduler", {"diffusers", "PNDMScheduler"}},
                                           {"text_encoder", {"transformers", "CLIPTextModel"}},
                                           {"tokenizer", {"transformers", "CLIPTokenizer"}},
                                           {"unet", {"diffusers", "UNet2DConditionModel"}},
                                           {"vae", {"diffusers", "AutoencoderKL"}}});
  fs::create_directories(folder / "scheduler");
  write_json(folder / "scheduler" / "scheduler_config.json", sd_scheduler_config_json());

  DIFFUSE_LOG_INFO("writing {} text_encoder (CLIP)", options.shape);
  fs::create_directories(folder / "text_encoder");
  write_json(folder / "text_encoder" / "config.json", clip_config_json(clip));
  {
    ClipTextModel model(clip, tensor_options);
    write_weights(*model, folder / "text_encoder", "model", options, options.seed + 1);
  }
  DIFFUSE_LOG_INFO("writing {} unet", options.shape);
  fs::create_directories(folder / "unet");
  write_json(folder / "unet" / "config.json", unet_json);
  {
    UNet2DConditionModel model(UNet2DConditionConfig::from_json(JsonConfig::wrap(unet_json, "unet/config.json")),
                               tensor_options);
    write_weights(*model, folder / "unet", "diffusion_pytorch_model", options, options.seed + 3);
  }
  DIFFUSE_LOG_INFO("writing {} vae", options.shape);
  fs::create_directories(folder / "vae");
  write_json(folder / "vae" / "config.json", vae_config_json(vae));
  {
    AutoencoderKL model(vae, tensor_options);
    write_weights(*model, folder / "vae", "diffusion_pytorch_model", options, options.seed + 4);
  }
}

}  // namespace

std::vector<std::string> random_pipeline_shape_names() {
  return {"flux-tiny", "flux-dev", "sd15-tiny", "sd15", "qwen-image-tiny", "qwen-image"};
}

void write_random_pipeline(const fs::path& folder, const RandomPipelineOptions& options) {
  if (options.shape == "sd15" || options.shape == "sd15-tiny") return write_random_sd_pipeline(folder, options);
  if (options.shape == "qwen-image" || options.shape == "qwen-image-tiny")
    return write_random_qwenimage_pipeline(folder, options);
  write_random_flux_pipeline(folder, options);
}

std::vector<std::string> flux_shape_names() { return {"flux-tiny", "flux-dev"}; }

FluxShape flux_shape(std::string_view name) {
  FluxShape shape;
  shape.scheduler.shift = 3.0;
  shape.scheduler.use_dynamic_shifting = true;
  shape.scheduler.base_shift = 0.5;
  shape.scheduler.max_shift = 1.15;
  shape.vae.down_block_types = std::vector<std::string>(4, "DownEncoderBlock2D");
  shape.vae.up_block_types = std::vector<std::string>(4, "UpDecoderBlock2D");
  shape.vae.scaling_factor = 0.3611;
  shape.vae.shift_factor = 0.1159;
  shape.vae.use_quant_conv = false;
  shape.vae.use_post_quant_conv = false;
  shape.text_encoder.pad_token_id = 49407;
  shape.text_encoder_2.feed_forward_proj = "gated-gelu";
  shape.text_encoder_2.is_gated_act = true;
  shape.text_encoder_2.dense_act_fn = "gelu_new";
  shape.transformer.guidance_embeds = true;
  if (name == "flux-tiny") {
    auto& clip = shape.text_encoder;
    clip.hidden_size = 32, clip.intermediate_size = 37, clip.projection_dim = 32;
    clip.num_hidden_layers = 2, clip.num_attention_heads = 4;
    auto& t5 = shape.text_encoder_2;
    t5.d_model = 32, t5.d_kv = 8, t5.d_ff = 64, t5.num_layers = 2, t5.num_heads = 4, t5.vocab_size = 1100;
    auto& transformer = shape.transformer;
    transformer.in_channels = 16, transformer.out_channels = 16;
    transformer.num_layers = 2, transformer.num_single_layers = 2;
    transformer.attention_head_dim = 16, transformer.num_attention_heads = 4;
    transformer.joint_attention_dim = 32, transformer.pooled_projection_dim = 32;
    transformer.axes_dims_rope = {4, 6, 6};
    auto& vae = shape.vae;
    vae.block_out_channels = {8, 16, 16, 16};
    vae.latent_channels = 4, vae.norm_num_groups = 4, vae.sample_size = 64;
    return shape;
  }
  if (name == "flux-dev") {
    auto& clip = shape.text_encoder;  // CLIP ViT-L/14's text tower
    clip.hidden_size = 768, clip.intermediate_size = 3072, clip.projection_dim = 768;
    clip.num_hidden_layers = 12, clip.num_attention_heads = 12;
    auto& t5 = shape.text_encoder_2;  // T5 v1.1 XXL's encoder
    t5.d_model = 4096, t5.d_kv = 64, t5.d_ff = 10240, t5.num_layers = 24, t5.num_heads = 64, t5.vocab_size = 32128;
    shape.transformer = FluxTransformerConfig{};  // diffusers' defaults are FLUX.1's shape
    shape.transformer.guidance_embeds = true;
    auto& vae = shape.vae;
    vae.block_out_channels = {128, 256, 512, 512};
    vae.layers_per_block = 2, vae.latent_channels = 16, vae.norm_num_groups = 32, vae.sample_size = 1024;
    return shape;
  }
  std::string names;
  for (const auto& n : flux_shape_names()) names += (names.empty() ? "" : ", ") + n;
  throw Error("unknown pipeline shape '" + std::string(name) + "' (known: " + names + ")");
}

void write_random_flux_pipeline(const fs::path& folder, const RandomPipelineOptions& options) {
  FluxShape shape = flux_shape(options.shape);
  fs::create_directories(folder);
  const at::TensorOptions tensor_options = at::TensorOptions().dtype(options.dtype);

  if (options.tokenizers_from) {
    copy_folder(*options.tokenizers_from / "tokenizer", folder / "tokenizer");
    copy_folder(*options.tokenizers_from / "tokenizer_2", folder / "tokenizer_2");
    const auto spiece = tokenizers::SentencePieceModel::load(folder / "tokenizer_2" / "spiece.model");
    shape.text_encoder_2.vocab_size = static_cast<int64_t>(spiece.pieces.size()) + 100;
  } else {
    write_clip_tokenizer(folder / "tokenizer", shape.text_encoder);
    write_t5_tokenizer(folder / "tokenizer_2", shape.text_encoder_2);
  }

  write_json(folder / "model_index.json", {{"_class_name", "FluxPipeline"},
                                           {"_diffusers_version", "0.40.0.dev0"},
                                           {"feature_extractor", {nullptr, nullptr}},
                                           {"image_encoder", {nullptr, nullptr}},
                                           {"scheduler", {"diffusers", "FlowMatchEulerDiscreteScheduler"}},
                                           {"text_encoder", {"transformers", "CLIPTextModel"}},
                                           {"text_encoder_2", {"transformers", "T5EncoderModel"}},
                                           {"tokenizer", {"transformers", "CLIPTokenizer"}},
                                           {"tokenizer_2", {"transformers", "T5Tokenizer"}},
                                           {"transformer", {"diffusers", "FluxTransformer2DModel"}},
                                           {"vae", {"diffusers", "AutoencoderKL"}}});
  fs::create_directories(folder / "scheduler");
  write_json(folder / "scheduler" / "scheduler_config.json", scheduler_config_json(shape.scheduler));

  // One component at a time, so that only one model's weights are in memory.
  DIFFUSE_LOG_INFO("writing {} text_encoder (CLIP)", options.shape);
  fs::create_directories(folder / "text_encoder");
  write_json(folder / "text_encoder" / "config.json", clip_config_json(shape.text_encoder));
  {
    ClipTextModel model(shape.text_encoder, tensor_options);
    write_weights(*model, folder / "text_encoder", "model", options, options.seed + 1);
  }
  DIFFUSE_LOG_INFO("writing {} text_encoder_2 (T5)", options.shape);
  fs::create_directories(folder / "text_encoder_2");
  write_json(folder / "text_encoder_2" / "config.json", t5_config_json(shape.text_encoder_2));
  write_t5_weights(shape.text_encoder_2, folder / "text_encoder_2", options, options.seed + 2);
  DIFFUSE_LOG_INFO("writing {} transformer", options.shape);
  fs::create_directories(folder / "transformer");
  write_json(folder / "transformer" / "config.json", transformer_config_json(shape.transformer));
  {
    FluxTransformer2DModel model(shape.transformer, tensor_options);
    write_weights(*model, folder / "transformer", "diffusion_pytorch_model", options, options.seed + 3);
  }
  DIFFUSE_LOG_INFO("writing {} vae", options.shape);
  fs::create_directories(folder / "vae");
  write_json(folder / "vae" / "config.json", vae_config_json(shape.vae));
  {
    AutoencoderKL model(shape.vae, tensor_options);
    write_weights(*model, folder / "vae", "diffusion_pytorch_model", options, options.seed + 4);
  }
}

}  // namespace diffuse
