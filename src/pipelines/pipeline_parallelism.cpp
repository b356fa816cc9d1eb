// DiffusionPipeline's parallelism, once for every family: the cfg x ring x Ulysses mesh, the family's
// context split inside each cfg half, and the per-call choice of splitting guidance.

#include "diffuse/distributed/communicator.hpp"
#include "diffuse/error.hpp"
#include "diffuse/parallel/parallel_mesh.hpp"
#include "diffuse/pipelines/diffusion_pipeline.hpp"
#include "log.hpp"

namespace diffuse {

void DiffusionPipeline::enable_parallelism(const ParallelConfig& config, std::shared_ptr<Communicator> world) {
  if (!world) throw Error(class_name() + "::enable_parallelism: no communicator given");
  // Everything that can be refused is refused here, the same on every rank, before any collective.
  config.validate(world->size());
  check_parallel_config(config);
  disable_parallelism();
  auto mesh = std::make_shared<const ParallelMesh>(world, config);
  if (mesh->active() && config.splits_context()) enable_context_parallelism(config.context(), mesh->context_group());
  parallel_world_ = std::move(world);
  parallel_mesh_ = std::move(mesh);
  DIFFUSE_LOG_DEBUG("{}: parallelism {} over {} ranks (this is rank {}, cfg index {})", class_name(), config.describe(),
                    parallel_world_->size(), parallel_world_->rank(), parallel_mesh_->cfg_index());
}

void DiffusionPipeline::disable_parallelism() {
  disable_context_parallelism();
  parallel_mesh_.reset();
  parallel_world_.reset();
}

int DiffusionPipeline::parallel_rank() const { return parallel_world_ ? parallel_world_->rank() : 0; }

void DiffusionPipeline::check_parallel_config(const ParallelConfig& config) const {
  throw Error(class_name() + " does not support parallel_config (asked for " + config.describe() + ")");
}

void DiffusionPipeline::enable_context_parallelism(const ContextParallelConfig& config, std::shared_ptr<Communicator>) {
  throw Error(class_name() + " cannot split its denoiser's tokens (asked for " + config.describe() + ")");
}

void DiffusionPipeline::enable_parallelism_from(const PipelineOptions& options) {
  if (!options.parallel_config) return;
  if (!options.parallel_world)
    throw Error(class_name() + ": parallel_config needs parallel_world, the communicator over the ranks "
                "(Distributed::init().shared_communicator())");
  enable_parallelism(*options.parallel_config, options.parallel_world);
}

std::shared_ptr<Communicator> DiffusionPipeline::cfg_group_for_call(bool guided, const std::string& why_not) const {
  if (!parallel_mesh_ || !parallel_mesh_->cfg_group()) return nullptr;
  if (!guided) {
    // Documented fallback (docs/context_parallel.md): refusing would make a cfg-parallel server fail
    // every unguided request; computing the same pass on both halves keeps the answer right.
    if (parallel_rank() == 0)
      DIFFUSE_LOG_WARN("cfg_degree 2 falls back for this call: {}, so there is no unconditional pass; both cfg "
                       "halves compute the conditional pass (the same latents, no speedup)",
                       why_not);
    return nullptr;
  }
  return parallel_mesh_->cfg_group();
}

int64_t DiffusionPipeline::context_parallel_degree() const {
  return parallel_mesh_ && parallel_mesh_->active() ? parallel_mesh_->config().context_degree() : 1;
}

}  // namespace diffuse
