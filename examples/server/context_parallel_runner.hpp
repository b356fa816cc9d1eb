#pragma once
// Parallelism over ranks behind one endpoint (context parallelism, CFG parallelism, or both): every
// rank of the launcher's world loads the pipeline with the same parallel_config; rank 0 serves HTTP and, for each job, broadcasts its parameters to the
// other ranks, and all of them make the call together (rank 0 gets the images). At every step rank 0
// broadcasts whether to go on, so a cancelled job stops on every rank at the same step. While no job
// comes, rank 0 broadcasts a ping every few seconds, so the other ranks' waits stay within the
// communicator's timeout; at shutdown it broadcasts "stop" and every rank exits.
//
//   rank 0:  JobQueue(..., {std::make_unique<ContextParallelLeader>(std::move(runner), world)})
//   others:  follow_jobs(runner, *world);   // returns when rank 0 stops

#include <memory>

#include "diffuse/distributed/communicator.hpp"
#include "server/pipeline_runner.hpp"

namespace diffuse::server {

class ContextParallelLeader : public JobRunner {
 public:
  // `mode`: the parallelism's description, for /v1/models ("ulysses 2", "cfg 2").
  ContextParallelLeader(std::unique_ptr<PipelineRunner> local, std::shared_ptr<Communicator> world, std::string mode);

  JobOutput run(const GenerationParams& params, const StepProgress& progress) override;
  void idle() override;
  void stop() override;
  std::string describe() const override;

 private:
  std::unique_ptr<PipelineRunner> local_;
  std::shared_ptr<Communicator> world_;
  std::string mode_;
  bool stopped_ = false;
};

// The loop of the ranks other than 0: each job rank 0 sends is run here too; returns at "stop".
// A job that fails here is logged (rank 0 reports its own failure to the client).
void follow_jobs(PipelineRunner& local, Communicator& world);

}  // namespace diffuse::server
