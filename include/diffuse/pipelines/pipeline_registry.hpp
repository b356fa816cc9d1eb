#pragma once
// Pipeline families by model_index.json's `_class_name`, as diffusers' DiffusionPipeline.from_pretrained
// picks the class a folder names:
//
//   auto pipe = load_pipeline(folder, {.dtype = at::kBFloat16, .device = "cuda"});  // FLUX.1, SD 1.5, ...
//   std::cout << pipe->class_name();                                                  // "FluxPipeline"
//
// A new family registers itself with one line (src/pipelines/pipeline_registry.cpp lists the built-in
// ones); an unknown class is an error naming it and listing what is supported.

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/pipelines/diffusion_pipeline.hpp"

namespace diffuse {

using PipelineFactory =
    std::function<std::unique_ptr<DiffusionPipeline>(const std::filesystem::path& folder, PipelineOptions options)>;

// Adds or replaces the family of `class_name`.
void register_pipeline(const std::string& class_name, PipelineFactory factory);
std::vector<std::string> pipeline_class_names();

// Reads `folder`/model_index.json and builds its family with `options`. Throws diffuse::Error for a
// folder that is not a pipeline and for a class no family is registered for.
std::unique_ptr<DiffusionPipeline> load_pipeline(const std::filesystem::path& folder, PipelineOptions options = {});

}  // namespace diffuse
