#include "diffuse/io/inspect.hpp"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/io/configs.hpp"

namespace diffuse {
namespace {

bool has_weights(const std::filesystem::path& folder) {
  if (!std::filesystem::is_directory(folder)) return false;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const std::string name = entry.path().filename().string();
    if (name.find(".safetensors") != std::string::npos) return true;
  }
  return false;
}

void add_weights(ComponentSummary& component, const std::filesystem::path& folder) {
  if (!has_weights(folder)) return;
  const Checkpoint checkpoint = Checkpoint::open(folder);
  for (const auto& file : checkpoint.files()) component.weight_files.push_back(file->path().filename().string());
  for (const TensorInfo& info : checkpoint.tensors()) {
    component.tensors += 1;
    component.parameters += info.numel();
    component.bytes += info.byte_size();
    component.bytes_by_dtype[info.dtype] += info.byte_size();
  }
}

// A model folder's class: diffusers writes _class_name, transformers writes architectures[0].
std::string model_class(const std::filesystem::path& folder) {
  const auto config = folder / "config.json";
  if (!std::filesystem::exists(config)) return "";
  const JsonConfig json = JsonConfig::load(config);
  if (json.has("_class_name")) return json.get_string("_class_name", "");
  const auto architectures = json.get_string_list("architectures", {});
  return architectures.empty() ? "" : architectures.front();
}

}  // namespace

std::string format_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1000.0 && unit < 4) {
    value /= 1000.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.2f %s", value, units[unit]);
  return text;
}

FolderSummary inspect_folder(const std::filesystem::path& folder) {
  if (!std::filesystem::is_directory(folder)) throw Error(folder.string() + ": not a folder");
  FolderSummary summary;
  summary.folder = folder;
  const auto index_path = folder / "model_index.json";
  if (std::filesystem::exists(index_path)) {
    const ModelIndex index = ModelIndex::from_file(index_path);
    summary.is_pipeline = true;
    summary.class_name = index.class_name;
    for (const auto& [name, entry] : index.components) {
      ComponentSummary component;
      component.name = name;
      component.library = entry.library;
      component.class_name = entry.class_name;
      add_weights(component, folder / name);
      summary.components.push_back(std::move(component));
    }
    return summary;
  }
  if (!has_weights(folder) && !std::filesystem::exists(folder / "config.json"))
    throw Error(folder.string() + ": neither a pipeline (model_index.json) nor a model folder (config.json, *.safetensors)");
  ComponentSummary component;
  component.name = folder.filename().string();
  component.class_name = model_class(folder);
  add_weights(component, folder);
  summary.class_name = component.class_name;
  summary.components.push_back(std::move(component));
  return summary;
}

uint64_t FolderSummary::total_bytes() const {
  uint64_t total = 0;
  for (const auto& c : components) total += c.bytes;
  return total;
}

int64_t FolderSummary::total_parameters() const {
  int64_t total = 0;
  for (const auto& c : components) total += c.parameters;
  return total;
}

std::string FolderSummary::to_text() const {
  std::ostringstream out;
  out << folder.string() << ": " << (is_pipeline ? "pipeline " : "model ") << class_name << "\n";
  for (const auto& c : components) {
    char line[256];
    std::snprintf(line, sizeof line, "  %-16s %-32s", c.name.c_str(), c.class_name.c_str());
    out << line;
    if (c.tensors > 0) {
      std::snprintf(line, sizeof line, " %8.2fM params %10s  ", c.parameters / 1e6, format_bytes(c.bytes).c_str());
      out << line;
      for (const auto& [dtype, bytes] : c.bytes_by_dtype) out << dtype << ":" << format_bytes(bytes) << " ";
      out << "(" << c.tensors << " tensors in " << c.weight_files.size() << " file"
          << (c.weight_files.size() == 1 ? "" : "s") << ")";
    }
    out << "\n";
  }
  out << "  total: " << total_parameters() / 1e6 << "M parameters, " << format_bytes(total_bytes()) << "\n";
  return out.str();
}

std::string FolderSummary::to_json() const {
  nlohmann::json json;
  json["folder"] = folder.string();
  json["class_name"] = class_name;
  json["is_pipeline"] = is_pipeline;
  json["total_bytes"] = total_bytes();
  json["total_parameters"] = total_parameters();
  json["components"] = nlohmann::json::array();
  for (const auto& c : components) {
    json["components"].push_back({{"name", c.name},
                                  {"library", c.library},
                                  {"class_name", c.class_name},
                                  {"weight_files", c.weight_files},
                                  {"tensors", c.tensors},
                                  {"parameters", c.parameters},
                                  {"bytes", c.bytes},
                                  {"bytes_by_dtype", c.bytes_by_dtype}});
  }
  return json.dump(2);
}

}  // namespace diffuse
