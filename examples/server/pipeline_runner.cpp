#include "server/pipeline_runner.hpp"

#include "diffuse/io/png.hpp"

namespace diffuse::server {

PipelineRunner::PipelineRunner(std::unique_ptr<DiffusionPipeline> pipeline, std::string where)
    : pipeline_(std::move(pipeline)), folder_scheduler_(pipeline_->scheduler().clone()), where_(std::move(where)) {}

JobOutput PipelineRunner::run(const GenerationParams& params, const StepProgress& progress) {
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
