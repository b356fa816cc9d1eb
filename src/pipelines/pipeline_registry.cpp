#include "diffuse/pipelines/pipeline_registry.hpp"

#include <map>
#include <mutex>

#include "diffuse/error.hpp"
#include "diffuse/pipelines/flux_pipeline.hpp"
#include "diffuse/pipelines/qwenimage_pipeline.hpp"
#include "diffuse/pipelines/stable_diffusion_pipeline.hpp"

namespace diffuse {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, PipelineFactory> families;
};

template <typename Family>
PipelineFactory factory_of() {
  return [](const std::filesystem::path& folder, PipelineOptions options) -> std::unique_ptr<DiffusionPipeline> {
    return std::make_unique<Family>(Family::from_pretrained(folder, std::move(options)));
  };
}

Registry& registry() {
  static Registry* registry = [] {
    auto* r = new Registry;
    // The built-in families, one line each.
    r->families["FluxPipeline"] = factory_of<FluxPipeline>();
    r->families["StableDiffusionPipeline"] = factory_of<StableDiffusionPipeline>();
    r->families["QwenImagePipeline"] = factory_of<QwenImagePipeline>();
    return r;
  }();
  return *registry;
}

}  // namespace

void register_pipeline(const std::string& class_name, PipelineFactory factory) {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mutex);
  r.families[class_name] = std::move(factory);
}

std::vector<std::string> pipeline_class_names() {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& [name, factory] : r.families) names.push_back(name);
  return names;
}

std::unique_ptr<DiffusionPipeline> load_pipeline(const std::filesystem::path& folder, PipelineOptions options) {
  const auto index_path = folder / "model_index.json";
  if (!std::filesystem::exists(index_path))
    throw Error(folder.string() + ": no model_index.json (not a diffusers pipeline folder)");
  const std::string class_name = ModelIndex::from_file(index_path).class_name;
  PipelineFactory factory;
  {
    Registry& r = registry();
    const std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.families.find(class_name);
    if (it != r.families.end()) factory = it->second;
  }
  if (!factory) {
    std::string known;
    for (const auto& name : pipeline_class_names()) known += (known.empty() ? "" : ", ") + name;
    throw Error(index_path.string() + ": pipeline class '" + class_name + "' is not supported by diffuse (supported: " +
                known + ")");
  }
  return factory(folder, std::move(options));
}

std::unique_ptr<DiffusionPipeline> DiffusionPipeline::from_pretrained(const std::filesystem::path& folder,
                                                                      PipelineOptions options) {
  return load_pipeline(folder, std::move(options));
}

}  // namespace diffuse
