// The scheduler registry: class names (and the short names people use) to factories.

#include <cctype>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/schedulers/ddim.hpp"
#include "diffuse/schedulers/dpmsolver_multistep.hpp"
#include "diffuse/schedulers/euler_ancestral_discrete.hpp"
#include "diffuse/schedulers/euler_discrete.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"
#include "diffuse/schedulers/pndm.hpp"
#include "diffuse/schedulers/scheduler.hpp"

namespace diffuse {

namespace {

template <typename S>
SchedulerFactory factory_of() {
  return [](const nlohmann::json& config) -> std::unique_ptr<Scheduler> {
    return std::make_unique<S>(S::from_config(config));
  };
}

struct Registry {
  std::mutex mutex;
  std::map<std::string, SchedulerFactory> factories;

  Registry() {
    factories["PNDMScheduler"] = factory_of<PNDMScheduler>();
    factories["DDIMScheduler"] = factory_of<DDIMScheduler>();
    factories["EulerDiscreteScheduler"] = factory_of<EulerDiscreteScheduler>();
    factories["EulerAncestralDiscreteScheduler"] = factory_of<EulerAncestralDiscreteScheduler>();
    factories["DPMSolverMultistepScheduler"] = factory_of<DPMSolverMultistepScheduler>();
    factories["FlowMatchEulerDiscreteScheduler"] = factory_of<FlowMatchEulerDiscreteScheduler>();
  }
};

Registry& registry() {
  static Registry instance;  // built on first use, so no static initialization order to worry about
  return instance;
}

// Short names people use (ComfyUI, A1111, diffusers' docs), lower case with '_' for '-'.
const std::map<std::string, std::string>& aliases() {
  static const std::map<std::string, std::string> table = {
      {"pndm", "PNDMScheduler"},
      {"plms", "PNDMScheduler"},
      {"ddim", "DDIMScheduler"},
      {"euler", "EulerDiscreteScheduler"},
      {"euler_a", "EulerAncestralDiscreteScheduler"},
      {"euler_ancestral", "EulerAncestralDiscreteScheduler"},
      {"dpm++2m", "DPMSolverMultistepScheduler"},
      {"dpmsolver++", "DPMSolverMultistepScheduler"},
      {"dpmsolver_multistep", "DPMSolverMultistepScheduler"},
      {"flow_match", "FlowMatchEulerDiscreteScheduler"},
      {"flow_match_euler", "FlowMatchEulerDiscreteScheduler"},
  };
  return table;
}

std::string normalized(const std::string& name) {
  std::string out;
  for (char c : name) out += c == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string known_names() {
  std::map<std::string, std::vector<std::string>> by_class;
  for (const std::string& name : scheduler_names()) by_class[name];
  for (const auto& [alias, name] : aliases())
    if (by_class.count(name)) by_class[name].push_back(alias);
  std::string out;
  for (const auto& [name, short_names] : by_class) {
    if (!out.empty()) out += ", ";
    out += name;
    if (short_names.empty()) continue;
    out += " (";
    for (size_t i = 0; i < short_names.size(); ++i) out += (i ? ", " : "") + short_names[i];
    out += ")";
  }
  return out;
}

SchedulerFactory find_factory(const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (auto it = r.factories.find(name); it != r.factories.end()) return it->second;
  if (auto alias = aliases().find(normalized(name)); alias != aliases().end()) {
    if (auto it = r.factories.find(alias->second); it != r.factories.end()) return it->second;
  }
  // Class names are matched exactly first; a case slip ("pndmscheduler") still finds its class.
  for (const auto& [known, factory] : r.factories)
    if (normalized(known) == normalized(name)) return factory;
  return nullptr;
}

}  // namespace

void register_scheduler(const std::string& class_name, SchedulerFactory factory) {
  if (class_name.empty()) throw Error("register_scheduler: the class name is empty");
  if (!factory) throw Error("register_scheduler: no factory given for '" + class_name + "'");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.factories[class_name] = std::move(factory);
}

std::vector<std::string> scheduler_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& [name, factory] : r.factories) names.push_back(name);
  return names;  // std::map keeps them sorted
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& class_name_or_alias, const nlohmann::json& config) {
  const SchedulerFactory factory = find_factory(class_name_or_alias);
  if (!factory)
    throw Error("unknown scheduler '" + class_name_or_alias + "'; known schedulers: " + known_names());
  if (!config.is_object())
    throw Error("make_scheduler('" + class_name_or_alias + "'): the config must be a JSON object, got " +
                config.type_name());
  return factory(config);
}

std::unique_ptr<Scheduler> load_scheduler(const std::filesystem::path& folder) {
  const std::filesystem::path file = folder / "scheduler_config.json";
  const JsonConfig json = JsonConfig::load(file);
  const std::string class_name = json.get_string("_class_name", "");
  if (class_name.empty())
    throw Error(file.string() + ": missing '_class_name' (which scheduler to make); known schedulers: " +
                known_names());
  if (!find_factory(class_name))
    throw Error(file.string() + ": unknown scheduler class '" + class_name + "'; known schedulers: " + known_names());
  try {
    return make_scheduler(class_name, json.json());
  } catch (const Error& e) {
    throw Error(file.string() + ": " + e.what());
  }
}

}  // namespace diffuse
