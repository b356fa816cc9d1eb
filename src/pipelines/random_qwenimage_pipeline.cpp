// Random Qwen-Image folders (make_random_pipeline --shape qwen-image | qwen-image-tiny): the published
// Qwen/Qwen-Image layout, config keys and tensor names (diffusers' QwenImagePipeline and transformers'
// Qwen2_5_VLForConditionalGeneration / Qwen2Tokenizer read them as they are), with random weights.
//   qwen-image       the real sizes: a 20B transformer (60 blocks of 24 x 128 heads), Qwen2.5-VL-7B's
//                    language model (28 layers, 3584 wide), the causal-3D VAE (base_dim 96, z_dim 16)
//   qwen-image-tiny  ../shared/fixtures/tiny-qwenimage's sizes
// The text encoder's vision tower is described in its config but not written: the pipeline never runs
// it (transformers initializes it, with a warning, when it loads such a folder).

#include <ATen/ATen.h>

#include <map>

#include "diffuse/error.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/models/autoencoder_kl_qwenimage.hpp"
#include "diffuse/models/qwen2_5_vl_text.hpp"
#include "diffuse/models/qwenimage_transformer.hpp"
#include "io/atomic_file.hpp"
#include "log.hpp"
#include "random_pipeline_support.hpp"
#include "tokenizers/byte_level_bpe.hpp"

namespace diffuse {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using random_detail::write_json;
using random_detail::write_weights;

// Qwen2.5-VL's special tokens, in the order Qwen's vocabulary numbers them.
const std::vector<std::string> kSpecialTokens = {
    "<|endoftext|>",  "<|im_start|>",   "<|im_end|>",     "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>",  "<|box_end|>",    "<|quad_start|>", "<|quad_end|>",         "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",  "<|video_pad|>"};

// A byte-level BPE of single bytes and no merges, with Qwen2's normalizer, split pattern and special
// tokens (after the 256 bytes): every text tokenizes, one byte per token. Written both as
// tokenizer.json (what transformers 5 reads) and as vocab.json + merges.txt with the special tokens in
// tokenizer_config.json. Returns the special tokens' ids by name.
std::map<std::string, int64_t> write_qwen2_tokenizer(const fs::path& folder) {
  fs::create_directories(folder);
  json vocab = json::object();
  int64_t id = 0;
  for (const std::string& symbol : tokenizers::byte_level_alphabet()) vocab[symbol] = id++;
  std::map<std::string, int64_t> special;
  json added = json::array(), decoder = json::object();
  for (const std::string& token : kSpecialTokens) {
    special[token] = id;
    json entry = {{"content", token}, {"single_word", false}, {"lstrip", false},
                  {"rstrip", false},  {"normalized", false},  {"special", true}};
    decoder[std::to_string(id)] = entry;
    entry["id"] = id++;
    added.push_back(entry);
  }
  write_json(folder / "vocab.json", vocab);
  write_file_atomically(folder / "merges.txt", [](std::ostream& out) { out << "#version: 0.2\n"; });
  const std::string split =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  write_json(folder / "tokenizer.json",
             {{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", {{"type", "NFC"}}},
              {"pre_tokenizer",
               {{"type", "Sequence"},
                {"pretokenizers",
                 json::array({{{"type", "Split"}, {"pattern", {{"Regex", split}}}, {"behavior", "Isolated"}, {"invert", false}},
                              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                               {"use_regex", false}}})}}},
              {"post_processor",
               {{"type", "TemplateProcessing"},
                {"single", json::array({{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                {"pair", json::array({{{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                      {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
                {"special_tokens", json::object()}}},
              {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", ""},
                {"end_of_word_suffix", ""},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", json::array()}}}});
  json extra = json::array();
  for (size_t i = 1; i < kSpecialTokens.size(); ++i) extra.push_back(kSpecialTokens[i]);
  write_json(folder / "tokenizer_config.json", {{"add_prefix_space", false},
                                                {"added_tokens_decoder", decoder},
                                                {"bos_token", nullptr},
                                                {"clean_up_tokenization_spaces", false},
                                                {"eos_token", "<|im_end|>"},
                                                {"errors", "replace"},
                                                {"extra_special_tokens", extra},
                                                {"model_max_length", 131072},
                                                {"pad_token", "<|endoftext|>"},
                                                {"split_special_tokens", false},
                                                {"tokenizer_class", "Qwen2Tokenizer"},
                                                {"unk_token", nullptr}});
  return special;
}

// Qwen2_5_VLForConditionalGeneration's config.json as transformers 5 writes it.
json text_encoder_config_json(bool tiny, const std::map<std::string, int64_t>& special) {
  const int64_t vocab_size = tiny ? static_cast<int64_t>(256 + kSpecialTokens.size()) : 152064;
  json text = {{"attention_dropout", 0.0},
               {"bos_token_id", special.at("<|endoftext|>")},
               {"eos_token_id", special.at("<|im_end|>")},
               {"hidden_act", "silu"},
               {"hidden_size", tiny ? 32 : 3584},
               {"initializer_range", 0.02},
               {"intermediate_size", tiny ? 48 : 18944},
               {"max_position_embeddings", tiny ? 4096 : 128000},
               {"max_window_layers", tiny ? 80 : 28},
               {"model_type", "qwen2_5_vl_text"},
               {"num_attention_heads", tiny ? 4 : 28},
               {"num_hidden_layers", tiny ? 2 : 28},
               {"num_key_value_heads", tiny ? 2 : 4},
               {"pad_token_id", nullptr},
               {"rms_norm_eps", 1e-6},
               {"rope_parameters",
                {{"mrope_section", tiny ? json::array({2, 1, 1}) : json::array({16, 24, 24})},
                 {"rope_theta", 1000000.0},
                 {"rope_type", "default"},
                 {"type", "default"}}},
               {"sliding_window", nullptr},
               {"use_cache", true},
               {"use_sliding_window", false},
               {"vocab_size", vocab_size}};
  json layer_types = json::array();
  for (int64_t i = 0; i < text["num_hidden_layers"].get<int64_t>(); ++i) layer_types.push_back("full_attention");
  text["layer_types"] = layer_types;
  json vision = {{"depth", tiny ? 2 : 32},
                 {"fullatt_block_indexes", {7, 15, 23, 31}},
                 {"hidden_act", "silu"},
                 {"hidden_size", tiny ? 16 : 1280},
                 {"in_channels", 3},
                 {"initializer_range", 0.02},
                 {"intermediate_size", tiny ? 16 : 3420},
                 {"model_type", "qwen2_5_vl_vision"},
                 {"num_heads", tiny ? 2 : 16},
                 {"out_hidden_size", tiny ? 32 : 3584},
                 {"patch_size", 14},
                 {"rope_parameters", {{"rope_theta", 10000.0}, {"rope_type", "axial"}}},
                 {"spatial_merge_size", 2},
                 {"temporal_patch_size", 2},
                 {"tokens_per_second", 2},
                 {"window_size", 112}};
  return {{"architectures", {"Qwen2_5_VLForConditionalGeneration"}},
          {"dtype", "bfloat16"},
          {"image_token_id", special.at("<|image_pad|>")},
          {"model_type", "qwen2_5_vl"},
          {"text_config", text},
          {"tie_word_embeddings", false},
          {"transformers_version", "5.17.0"},
          {"video_token_id", special.at("<|video_pad|>")},
          {"vision_config", vision},
          {"vision_end_token_id", special.at("<|vision_end|>")},
          {"vision_start_token_id", special.at("<|vision_start|>")}};
}

json transformer_config_json(bool tiny, std::optional<int64_t> layers) {
  return {{"_class_name", "QwenImageTransformer2DModel"},
          {"_diffusers_version", "0.40.0.dev0"},
          {"attention_head_dim", tiny ? 16 : 128},
          {"axes_dims_rope", tiny ? json::array({8, 4, 4}) : json::array({16, 56, 56})},
          {"guidance_embeds", false},
          {"in_channels", tiny ? 16 : 64},
          {"joint_attention_dim", tiny ? 32 : 3584},
          {"num_attention_heads", tiny ? 4 : 24},
          {"num_layers", layers.value_or(tiny ? 2 : 60)},
          {"out_channels", tiny ? 4 : 16},
          {"patch_size", 2},
          {"use_additional_t_cond", false},
          {"use_layer3d_rope", false},
          {"zero_cond_t", false}};
}

json vae_config_json(bool tiny) {
  const AutoencoderKLQwenImageConfig published;  // diffusers' defaults are Qwen-Image's VAE
  return {{"_class_name", "AutoencoderKLQwenImage"},
          {"_diffusers_version", "0.40.0.dev0"},
          {"attn_scales", json::array()},
          {"base_dim", tiny ? 8 : published.base_dim},
          {"dim_mult", tiny ? std::vector<int64_t>{1, 2, 4} : published.dim_mult},
          {"dropout", 0.0},
          {"input_channels", 3},
          {"latents_mean", tiny ? std::vector<double>{-0.0974, -0.1208, -0.1116, 0.1335} : published.latents_mean},
          {"latents_std", tiny ? std::vector<double>{1.0166, 1.4971, 1.3032, 1.2823} : published.latents_std},
          {"num_res_blocks", tiny ? 1 : published.num_res_blocks},
          {"temperal_downsample", tiny ? std::vector<bool>{false, true} : published.temperal_downsample},
          {"z_dim", tiny ? 4 : published.z_dim}};
}

// Qwen-Image's scheduler_config.json: dynamic exponential shifting and the shift_terminal stretch.
json scheduler_config_json() {
  return {{"_class_name", "FlowMatchEulerDiscreteScheduler"},
          {"_diffusers_version", "0.40.0.dev0"},
          {"base_image_seq_len", 256},
          {"base_shift", 0.5},
          {"invert_sigmas", false},
          {"max_image_seq_len", 8192},
          {"max_shift", 0.9},
          {"num_train_timesteps", 1000},
          {"shift", 1.0},
          {"shift_terminal", 0.02},
          {"stochastic_sampling", false},
          {"time_shift_type", "exponential"},
          {"use_beta_sigmas", false},
          {"use_dynamic_shifting", true},
          {"use_exponential_sigmas", false},
          {"use_karras_sigmas", false}};
}

}  // namespace

void write_random_qwenimage_pipeline(const fs::path& folder, const RandomPipelineOptions& options) {
  const bool tiny = options.shape == "qwen-image-tiny";
  if (!tiny && options.shape != "qwen-image")
    throw Error("unknown Qwen-Image shape '" + options.shape + "' (known: qwen-image, qwen-image-tiny)");
  if (options.tokenizers_from)
    throw Error("a Qwen-Image shape writes its own tokenizer; tokenizers_from is for the FLUX.1 and SD shapes");
  if (options.transformer_layers && *options.transformer_layers < 1)
    throw Error("transformer_layers must be at least 1, got " + std::to_string(*options.transformer_layers));
  fs::create_directories(folder);
  const at::TensorOptions tensor_options = at::TensorOptions().dtype(options.dtype);

  const std::map<std::string, int64_t> special = write_qwen2_tokenizer(folder / "tokenizer");

  write_json(folder / "model_index.json", {{"_class_name", "QwenImagePipeline"},
                                           {"_diffusers_version", "0.40.0.dev0"},
                                           {"scheduler", {"diffusers", "FlowMatchEulerDiscreteScheduler"}},
                                           {"text_encoder", {"transformers", "Qwen2_5_VLForConditionalGeneration"}},
                                           {"tokenizer", {"transformers", "Qwen2Tokenizer"}},
                                           {"transformer", {"diffusers", "QwenImageTransformer2DModel"}},
                                           {"vae", {"diffusers", "AutoencoderKLQwenImage"}}});
  fs::create_directories(folder / "scheduler");
  write_json(folder / "scheduler" / "scheduler_config.json", scheduler_config_json());

  // One component at a time, so that only one model's weights are in memory.
  DIFFUSE_LOG_INFO("writing {} text_encoder (Qwen2.5-VL's language model)", options.shape);
  fs::create_directories(folder / "text_encoder");
  const json text_json = text_encoder_config_json(tiny, special);
  write_json(folder / "text_encoder" / "config.json", text_json);
  write_json(folder / "text_encoder" / "generation_config.json",
             {{"bos_token_id", special.at("<|endoftext|>")},
              {"eos_token_id", {special.at("<|im_end|>"), special.at("<|endoftext|>")}},
              {"pad_token_id", special.at("<|endoftext|>")},
              {"transformers_version", "5.17.0"}});
  {
    Qwen2_5_VLTextModel model(Qwen2_5_VLTextConfig::from_json(JsonConfig::wrap(text_json, "text_encoder/config.json")),
                              tensor_options);
    write_weights(*model, folder / "text_encoder", "model", options, options.seed + 1);
  }
  DIFFUSE_LOG_INFO("writing {} transformer", options.shape);
  fs::create_directories(folder / "transformer");
  const json transformer_json = transformer_config_json(tiny, options.transformer_layers);
  write_json(folder / "transformer" / "config.json", transformer_json);
  {
    QwenImageTransformer2DModel model(
        QwenImageTransformerConfig::from_json(JsonConfig::wrap(transformer_json, "transformer/config.json")),
        tensor_options);
    write_weights(*model, folder / "transformer", "diffusion_pytorch_model", options, options.seed + 3);
  }
  DIFFUSE_LOG_INFO("writing {} vae", options.shape);
  fs::create_directories(folder / "vae");
  const json vae_json = vae_config_json(tiny);
  write_json(folder / "vae" / "config.json", vae_json);
  {
    AutoencoderKLQwenImage model(AutoencoderKLQwenImageConfig::from_json(JsonConfig::wrap(vae_json, "vae/config.json")),
                                 tensor_options);
    write_weights(*model, folder / "vae", "diffusion_pytorch_model", options, options.seed + 4);
  }
}

}  // namespace diffuse
