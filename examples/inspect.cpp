// inspect: what a diffusers pipeline or model folder holds (components, classes, parameter counts,
// bytes by dtype), read from configs and safetensors headers only: nothing is loaded.
//
//   inspect FOLDER [--json]

#include <cstring>
#include <iostream>

#include "diffuse/diffuse.hpp"

namespace {

void print_help() {
  std::cout << "usage: inspect FOLDER [--json]\n\n"
               "Prints the components of a diffusers pipeline folder (model_index.json) or of a model\n"
               "folder (config.json + *.safetensors): class, parameter count and bytes by dtype, read\n"
               "from file headers without loading any weight.\n\n"
               "  --json   print JSON instead of text\n"
               "  --help   this text\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::string folder;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      print_help();
      return 0;
    } else if (argv[i][0] == '-') {
      std::cerr << "inspect: unknown option " << argv[i] << " (see --help)\n";
      return 2;
    } else if (folder.empty()) {
      folder = argv[i];
    } else {
      std::cerr << "inspect: one folder only (got " << folder << " and " << argv[i] << ")\n";
      return 2;
    }
  }
  if (folder.empty()) {
    print_help();
    return 2;
  }
  try {
    const diffuse::FolderSummary summary = diffuse::inspect_folder(folder);
    std::cout << (json ? summary.to_json() + "\n" : summary.to_text());
  } catch (const diffuse::Error& e) {
    std::cerr << "inspect: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
