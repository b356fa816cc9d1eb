#include "server/pipeline_runner.hpp"

#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>

#include "diffuse/io/png.hpp"

namespace diffuse::server {

PipelineRunner::PipelineRunner(std::unique_ptr<DiffusionPipeline> pipeline, std::string where)
    : pipeline_(std::move(pipeline)),
      folder_scheduler_(pipeline_->scheduler().clone()),
      where_(std::move(where)),
      intra_op_threads_(at::get_num_threads()) {}

JobOutput PipelineRunner::run(const GenerationParams& params, const StepProgress& progress) {
  // The worker thread's current GPU is the pipeline's (a new thread starts on cuda:0), so that what the
  // call allocates without naming a device, and its streams, are on the pipeline's GPU.
  c10::OptionalDeviceGuard on_device;
  if (pipeline_->device().is_cuda()) on_device.reset_device(pipeline_->device());
  // OpenMP's thread count is per thread: the worker computes with as many threads as the main thread
  // (the generate program's), not with a fresh thread's default.
  if (at::get_num_threads() != intra_op_threads_) at::set_num_threads(intra_op_threads_);
  // As generate --scheduler NAME: the named class made from the folder scheduler's config. Each job
  // starts from the folder's, so one request's choice does not carry over to the next.
  if (params.scheduler != current_scheduler_) {
    if (params.scheduler.empty())
      pipeline_->set_scheduler(std::shared_ptr<Scheduler>(folder_scheduler_->clone()));
    else
      pipeline_->set_scheduler(std::shared_ptr<Scheduler>(make_scheduler(params.scheduler, folder_scheduler_->config())));
    current_scheduler_ = params.scheduler;
  }
  GenerateRequest request = params.request();
  bool stopped = false;
  request.callback = [&](const StepInfo& info) {
    if (progress(info.step + 1, info.num_steps)) return true;
    stopped = true;
    return false;
  };
  const GenerateOutput out = pipeline_->generate(request);
  JobOutput output;
  output.width = out.width;
  output.height = out.height;
  output.cancelled = stopped || out.interrupted;
  if (output.cancelled) return output;
  for (const Image& image : out.images) output.pngs.push_back(encode_png(image));
  return output;
}

}  // namespace diffuse::server
