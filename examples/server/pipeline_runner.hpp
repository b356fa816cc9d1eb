#pragma once
// A job on one loaded pipeline: the request's scheduler put in place (the folder's otherwise), the
// call made with a step callback that reports progress and can stop it, and the images encoded as
// PNG by the library's encoder (the bytes `generate` writes for the same arguments).

#include <memory>
#include <string>

#include "diffuse/pipelines/diffusion_pipeline.hpp"
#include "server/job_runner.hpp"

namespace diffuse::server {

class PipelineRunner : public JobRunner {
 public:
  PipelineRunner(std::unique_ptr<DiffusionPipeline> pipeline, std::string where);

  JobOutput run(const GenerationParams& params, const StepProgress& progress) override;
  std::string describe() const override { return where_; }

  DiffusionPipeline& pipeline() { return *pipeline_; }
  // The folder's scheduler as loaded (requests' scheduler names are made from its config).
  const Scheduler& folder_scheduler() const { return *folder_scheduler_; }

 private:
  std::unique_ptr<DiffusionPipeline> pipeline_;
  std::unique_ptr<Scheduler> folder_scheduler_;
  std::string current_scheduler_;  // "" = the folder's is in place
  std::string where_;
  int intra_op_threads_;  // the loading (main) thread's, for the worker thread
};

}  // namespace diffuse::server
