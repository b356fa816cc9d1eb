// inspect: what a diffusers pipeline or model folder holds (components, classes, parameter counts,
// bytes by dtype), read from configs and safetensors headers only: nothing is loaded.
//
//   inspect FOLDER [--json]

#include <iostream>

#include "cli/cli.hpp"
#include "diffuse/diffuse.hpp"

namespace cli = diffuse::cli;

int main(int argc, char** argv) {
  std::string folder;
  bool json = false;
  CLI::App app(
      "Prints the components of a diffusers pipeline folder (model_index.json) or of a model\n"
      "folder (config.json + *.safetensors): class, parameter count and bytes by dtype, read\n"
      "from file headers without loading any weight.",
      "inspect");
  cli::init(app, "inspect FOLDER [--json]");
  app.add_option("FOLDER", folder, "a pipeline or model folder")->required();
  cli::add_flag(app, "--json", json, "print JSON instead of text");
  cli::parse(app, argc, argv);
  try {
    const diffuse::FolderSummary summary = diffuse::inspect_folder(folder);
    std::cout << (json ? summary.to_json() + "\n" : summary.to_text());
  } catch (const diffuse::Error& e) {
    std::cerr << "inspect: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
