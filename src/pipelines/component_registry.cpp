#include "diffuse/pipelines/component_registry.hpp"

#include <map>
#include <mutex>

#include "diffuse/models/autoencoder_kl.hpp"
#include "diffuse/models/autoencoder_kl_qwenimage.hpp"
#include "diffuse/models/clip_text_model.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/qwen2_5_vl_text.hpp"
#include "diffuse/models/qwenimage_transformer.hpp"
#include "diffuse/models/t5_encoder.hpp"
#include "diffuse/models/unet_2d_condition.hpp"
#include "diffuse/tokenizers/clip_tokenizer.hpp"
#include "diffuse/tokenizers/qwen2_tokenizer.hpp"
#include "diffuse/tokenizers/t5_tokenizer.hpp"

namespace diffuse {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, ComponentClass> classes;
};

Registry& registry() {
  static Registry* registry = [] {
    auto* r = new Registry;
    // The built-in classes, one line each, under the names diffusers and transformers write.
    r->classes["CLIPTextModel"] = model_component_class<ClipTextModel>();
    r->classes["T5EncoderModel"] = model_component_class<T5EncoderModel>();
    r->classes["FluxTransformer2DModel"] = model_component_class<FluxTransformer2DModel>();
    r->classes["AutoencoderKL"] = model_component_class<AutoencoderKL>();
    r->classes["UNet2DConditionModel"] = model_component_class<UNet2DConditionModel>();
    r->classes["Qwen2_5_VLForConditionalGeneration"] = model_component_class<Qwen2_5_VLTextModel>();
    r->classes["QwenImageTransformer2DModel"] = model_component_class<QwenImageTransformer2DModel>();
    r->classes["AutoencoderKLQwenImage"] = model_component_class<AutoencoderKLQwenImage>();
    r->classes["CLIPTokenizer"] = tokenizer_component_class<ClipTokenizer>();
    r->classes["CLIPTokenizerFast"] = tokenizer_component_class<ClipTokenizer>();
    r->classes["T5Tokenizer"] = tokenizer_component_class<T5Tokenizer>();
    r->classes["T5TokenizerFast"] = tokenizer_component_class<T5Tokenizer>();
    r->classes["Qwen2Tokenizer"] = tokenizer_component_class<Qwen2Tokenizer>();
    r->classes["Qwen2TokenizerFast"] = tokenizer_component_class<Qwen2Tokenizer>();
    return r;
  }();
  return *registry;
}

}  // namespace

void register_component_class(const std::string& class_name, ComponentClass component_class) {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mutex);
  r.classes[class_name] = std::move(component_class);
}

const ComponentClass* find_component_class(const std::string& class_name) {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.classes.find(class_name);
  return it == r.classes.end() ? nullptr : &it->second;
}

std::vector<std::string> component_class_names() {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& [name, c] : r.classes) names.push_back(name);
  return names;
}

const Component& ComponentMap::at(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error("component '" + name + "' is not loaded");
  return it->second;
}

}  // namespace diffuse
