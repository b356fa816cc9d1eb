#include "diffuse/placement/device_map.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "diffuse/error.hpp"
#include "diffuse/placement/memory_size.hpp"

namespace diffuse {

bool name_is_under(std::string_view name, std::string_view prefix) {
  if (prefix.empty()) return true;
  if (name.size() < prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  return name.size() == prefix.size() || name[prefix.size()] == '.';
}

DeviceMap::DeviceMap(std::initializer_list<Entry> entries) {
  for (const auto& [unit, device] : entries) {
    if (contains(unit)) throw Error("device map names '" + unit + "' twice");
    set(unit, device);
  }
}

void DeviceMap::set(const std::string& unit, const std::string& device) {
  const std::string canonical = canonical_device(device);
  for (auto& entry : entries_) {
    if (entry.first == unit) {
      entry.second = canonical;
      return;
    }
  }
  entries_.emplace_back(unit, canonical);
}

const std::string& DeviceMap::at(std::string_view unit) const {
  for (const auto& entry : entries_)
    if (entry.first == unit) return entry.second;
  throw Error("device map has no entry '" + std::string(unit) + "' (it has " + to_json() + ")");
}

bool DeviceMap::contains(std::string_view unit) const {
  for (const auto& entry : entries_)
    if (entry.first == unit) return true;
  return false;
}

const std::string* DeviceMap::device_of(std::string_view name) const {
  const Entry* best = nullptr;
  for (const auto& entry : entries_) {
    if (name_is_under(name, entry.first) && (best == nullptr || entry.first.size() > best->first.size()))
      best = &entry;
  }
  return best ? &best->second : nullptr;
}

std::vector<std::string> DeviceMap::devices() const {
  std::vector<std::string> out;
  for (const auto& entry : entries_)
    if (std::find(out.begin(), out.end(), entry.second) == out.end()) out.push_back(entry.second);
  return out;
}

std::vector<std::string> DeviceMap::units_on(std::string_view device) const {
  std::vector<std::string> out;
  for (const auto& entry : entries_)
    if (entry.second == device) out.push_back(entry.first);
  return out;
}

std::string DeviceMap::to_json() const {
  std::string out = "{";
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (i) out += ", ";
    out += nlohmann::json(entries_[i].first).dump() + ": " + nlohmann::json(entries_[i].second).dump();
  }
  return out + "}";
}

DeviceMap DeviceMap::from_json(std::string_view text) {
  // ordered_json keeps the entries in the order they were written.
  nlohmann::ordered_json json;
  try {
    json = nlohmann::ordered_json::parse(text);
  } catch (const std::exception& e) {
    throw Error(std::string("device map JSON does not parse: ") + e.what());
  }
  if (!json.is_object()) throw Error("device map JSON must be an object of unit -> device");
  DeviceMap map;
  for (const auto& [unit, device] : json.items()) {
    if (!device.is_string()) throw Error("device map entry '" + unit + "' is not a device name");
    map.set(unit, device.get<std::string>());
  }
  return map;
}

std::ostream& operator<<(std::ostream& out, const DeviceMap& map) { return out << map.to_json(); }

}  // namespace diffuse
