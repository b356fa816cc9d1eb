#include "diffuse/placement/model_units.hpp"

#include <algorithm>
#include <set>

#include "diffuse/error.hpp"
#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/t5_encoder.hpp"

namespace diffuse {
namespace {

// Modules that are not units themselves: their children are (or are containers again). Containers own
// no parameters of their own.
std::vector<std::string> containers_of(const torch::nn::Module& model) {
  if (dynamic_cast<const FluxTransformer2DModelImpl*>(&model))
    return {"", "transformer_blocks", "single_transformer_blocks"};
  if (dynamic_cast<const T5EncoderModelImpl*>(&model)) return {"", "encoder", "encoder.block"};
  if (dynamic_cast<const ClipTextModelImpl*>(&model)) return {"", "encoder", "encoder.layers"};
  if (dynamic_cast<const AutoencoderKLImpl*>(&model))
    return {"", "encoder", "decoder", "encoder.down_blocks", "decoder.up_blocks"};
  throw Error("placement: " + model.name() +
              " is not a model that diffuse can place (FluxTransformer2DModel, T5EncoderModel, ClipTextModel, "
              "AutoencoderKL)");
}

uint64_t element_bytes(c10::ScalarType type) { return static_cast<uint64_t>(c10::elementSize(type)); }

}  // namespace

std::vector<ModelUnit> model_units(const torch::nn::Module& model, const std::vector<std::string>& keep_in_float32) {
  const std::vector<std::string> containers = containers_of(model);
  auto is_container = [&](const std::string& name) {
    return std::find(containers.begin(), containers.end(), name) != containers.end();
  };
  std::vector<ModelUnit> units;
  std::function<void(const torch::nn::Module&, const std::string&)> visit = [&](const torch::nn::Module& module,
                                                                                const std::string& prefix) {
    if (!module.named_parameters(/*recurse=*/false).is_empty() || !module.named_buffers(/*recurse=*/false).is_empty())
      throw Error("placement: container '" + prefix + "' of " + model.name() + " holds tensors of its own");
    for (const auto& child : module.named_children()) {
      const std::string name = prefix.empty() ? child.key() : prefix + "." + child.key();
      if (is_container(name)) {
        visit(*child.value(), name);
        continue;
      }
      ModelUnit unit{name, child.value(), 0};
      for (const auto& p : child.value()->named_parameters()) {
        const uint64_t size = keeps_float32(name + "." + p.key(), keep_in_float32) && c10::isFloatingType(p->scalar_type())
                                  ? 4
                                  : element_bytes(p->scalar_type());
        unit.bytes += static_cast<uint64_t>(p->numel()) * size;
      }
      for (const auto& b : child.value()->named_buffers())
        unit.bytes += static_cast<uint64_t>(b->numel()) * element_bytes(b->scalar_type());
      units.push_back(std::move(unit));
    }
  };
  visit(model, "");
  return units;
}

std::vector<PlacementUnit> placement_units(const std::vector<ModelUnit>& units) {
  std::vector<PlacementUnit> out;
  out.reserve(units.size());
  for (const auto& unit : units) out.push_back({unit.name, unit.bytes});
  return out;
}

uint64_t activation_estimate(const torch::nn::Module& model) {
  const auto parameters = model.parameters();
  const uint64_t element = parameters.empty() ? 4 : element_bytes(parameters.front().scalar_type());
  const uint64_t text_tokens = 512, image_tokens = 4096;  // 1024x1024 at 16 pixels per token
  if (const auto* flux = dynamic_cast<const FluxTransformer2DModelImpl*>(&model)) {
    // A single-stream block holds about 20 rows of inner_dim per token at its peak: the 4x MLP
    // activations before and after GELU, q/k/v, the attention output and the concatenation fed to proj_out.
    return (text_tokens + image_tokens) * static_cast<uint64_t>(flux->config().inner_dim()) * 20 * element;
  }
  if (const auto* t5 = dynamic_cast<const T5EncoderModelImpl*>(&model)) {
    const auto& c = t5->config();
    // The gated feed-forward's two d_ff rows and the hidden states, plus the float32 position bias.
    return text_tokens * static_cast<uint64_t>(3 * c.d_ff + 4 * c.d_model) * element +
           static_cast<uint64_t>(c.num_heads) * text_tokens * text_tokens * 4;
  }
  if (const auto* clip = dynamic_cast<const ClipTextModelImpl*>(&model)) {
    const auto& c = clip->config();
    return 77 * static_cast<uint64_t>(3 * c.intermediate_size + 6 * c.hidden_size) * element;
  }
  if (const auto* vae = dynamic_cast<const AutoencoderKLImpl*>(&model)) {
    // Decoding at 1024x1024: a few full-resolution maps of the first block's channels.
    const auto& c = vae->config();
    return uint64_t{1024} * 1024 * static_cast<uint64_t>(c.block_out_channels.front()) * 6 * element;
  }
  containers_of(model);  // throws for a model it does not know
  return 0;
}

uint64_t checkpoint_bytes(const Checkpoint& checkpoint, c10::ScalarType dtype,
                          const std::vector<std::string>& keep_in_float32,
                          const std::map<std::string, std::string>& tied_aliases) {
  uint64_t total = 0;
  for (const TensorInfo& info : checkpoint.tensors()) {
    auto alias = tied_aliases.find(info.name);
    if (alias != tied_aliases.end() && checkpoint.contains(alias->second)) continue;
    const c10::ScalarType stored = safetensors_scalar_type(info.dtype);
    if (!c10::isFloatingType(stored)) {
      total += info.byte_size();
      continue;
    }
    const c10::ScalarType target = keeps_float32(info.name, keep_in_float32) ? c10::kFloat : dtype;
    total += static_cast<uint64_t>(info.numel()) * element_bytes(target);
  }
  return total;
}

}  // namespace diffuse
