// A process that tests/test_faults.cpp starts when a fault must not touch the test program itself: a
// rank that is killed inside a collective, or a request so large that a missing check would exhaust
// the machine. Exits
//   0  done (or, for collective_loop, never: it loops until killed or failed)
//   3  a diffuse::Error (its message is printed after "error: ")
//   4  another exception (printed after "unexpected exception")
//   2  bad arguments
//
//   helper_faults collective_loop FLOATS
//       every rank all_gathers FLOATS floats per round, forever, printing "round N" after each; the
//       test kills one rank while the others wait inside the collective. On the CPU over Gloo, or with
//       DIFFUSE_TEST_DEVICE=cuda on cuda:LOCAL_RANK over NCCL.
//   helper_faults generate PIPELINE HEIGHT WIDTH
//       one denoising step of the pipeline at that size; prints "ok HxW" or the error.
//   helper_faults load PIPELINE
//       loads the whole pipeline; prints "ok" or the error.

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

#include "diffuse/distributed/distributed.hpp"
#include "diffuse/error.hpp"
#include "diffuse/log.hpp"
#include "diffuse/pipelines/flux_pipeline.hpp"

using namespace diffuse;

namespace {

int collective_loop(int64_t floats) {
  // Gloo on the CPU; with DIFFUSE_TEST_DEVICE=cuda, NCCL on the GPU numbered LOCAL_RANK.
  const char* test_device = std::getenv("DIFFUSE_TEST_DEVICE");
  const bool cuda = test_device != nullptr && std::string(test_device).rfind("cuda", 0) == 0;
  Distributed dist = Distributed::init({.device = cuda ? "cuda" : "cpu"});
  Communicator& comm = dist.communicator();
  const at::Tensor mine = at::full({floats}, static_cast<float>(dist.rank()), at::TensorOptions().device(dist.device()));
  for (int64_t round = 1;; ++round) {
    const at::Tensor all = comm.all_gather(mine);
    // Every rank's block holds its rank: a check that the data moved, not only that nothing failed.
    if (all[floats * (dist.world_size() - 1)].item<float>() != static_cast<float>(dist.world_size() - 1)) {
      std::cout << "wrong data in round " << round << std::endl;
      return 1;
    }
    std::cout << "round " << round << std::endl;
  }
}

int generate(const std::string& pipeline, int64_t height, int64_t width) {
  set_log_level("warn");
  FluxPipeline pipe = FluxPipeline::from_pretrained(pipeline);
  GenerateRequest request;
  request.prompt = "a dog";
  request.height = height;
  request.width = width;
  request.num_inference_steps = 1;
  request.max_sequence_length = 32;
  request.seed = 0;
  request.progress = false;
  const GenerateOutput out = pipe.generate(request);
  std::cout << "ok " << out.height << "x" << out.width << std::endl;
  return 0;
}

// The first line of a message (c10::Error appends a backtrace).
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  const auto start = std::chrono::steady_clock::now();
  try {
    if (scenario == "collective_loop" && argc == 3) return collective_loop(std::stoll(argv[2]));
    if (scenario == "generate" && argc == 5) return generate(argv[2], std::stoll(argv[3]), std::stoll(argv[4]));
    if (scenario == "load" && argc == 3) {
      set_log_level("warn");
      FluxPipeline::from_pretrained(argv[2]);
      std::cout << "ok" << std::endl;
      return 0;
    }
    std::cerr << "usage: helper_faults collective_loop FLOATS | generate PIPELINE HEIGHT WIDTH | load PIPELINE\n";
    return 2;
  } catch (const Error& e) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "error after " << seconds << " s: " << e.what() << std::endl;
    return 3;
  } catch (const std::exception& e) {
    std::cout << "unexpected exception (not diffuse::Error): " << first_line(e.what()) << std::endl;
    return 4;
  }
}
