#pragma once
// Where each part of a model, or each component of a pipeline, lives: an ordered map from a unit name
// ("transformer_blocks.7", "text_encoder_2") to a device ("cuda:0", "cuda:1", "cpu" or "disk"). It is a
// plain value: planned from sizes (placement/planner.hpp), printed like diffusers' hf_device_map, and
// applied by hooks (placement/dispatch.hpp).
//
// A name also covers everything under it: {"": "cuda:0"} is a whole model, {"transformer_blocks":
// "cpu"} every double block. The longest name that covers a unit decides.

#include <initializer_list>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace diffuse {

class DeviceMap {
 public:
  using Entry = std::pair<std::string, std::string>;  // unit -> device

  DeviceMap() = default;
  // Devices are canonicalized ("cuda" -> "cuda:0"); a unit given twice is an error.
  DeviceMap(std::initializer_list<Entry> entries);

  // Adds `unit` at the end, or changes its device in place.
  void set(const std::string& unit, const std::string& device);
  // The device of exactly `unit`; throws diffuse::Error naming it when absent.
  const std::string& at(std::string_view unit) const;
  bool contains(std::string_view unit) const;
  // The device of the longest entry that covers `name` ("" covers all, "a" covers "a" and "a.b.c");
  // nullptr when none does.
  const std::string* device_of(std::string_view name) const;

  const std::vector<Entry>& entries() const { return entries_; }
  bool empty() const { return entries_.empty(); }
  size_t size() const { return entries_.size(); }
  // Distinct devices, in order of first appearance.
  std::vector<std::string> devices() const;
  // The units placed on `device`, in order.
  std::vector<std::string> units_on(std::string_view device) const;

  // {"text_encoder": "cuda:1", "text_encoder_2": "cuda:0"}: entries in order, on one line.
  std::string to_json() const;
  // The inverse of to_json: a JSON object of strings. Throws diffuse::Error for anything else.
  static DeviceMap from_json(std::string_view json);

  bool operator==(const DeviceMap& other) const { return entries_ == other.entries_; }
  bool operator!=(const DeviceMap& other) const { return !(*this == other); }

 private:
  std::vector<Entry> entries_;
};

std::ostream& operator<<(std::ostream& out, const DeviceMap& map);

// True when `name` is `prefix` or lies under it ("a.b" is under "a", "ab" is not; all is under "").
bool name_is_under(std::string_view name, std::string_view prefix);

}  // namespace diffuse
