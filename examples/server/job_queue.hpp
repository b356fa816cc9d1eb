#pragma once
// The bounded job queue: requests become jobs, each worker (one per loaded pipeline) takes the oldest
// waiting job when it is free. A job accepted always ends as succeeded, failed or cancelled; a
// request beyond the queue's capacity is refused (429 with a Retry-After estimate), never dropped
// later. Finished jobs stay readable for a while (GET /v1/jobs/{id}) and are then forgotten.
//
//   JobQueue queue({.capacity = 8, .retention_seconds = 600}, std::move(runners));
//   auto job = queue.submit(params);            // throws ApiError(429 / 503)
//   queue.wait_until_done(job->id);
//   queue.forget(job->id);                      // sync requests: nothing stays behind
//   queue.shutdown(grace);                      // SIGTERM: cancel the waiting, let the running finish

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "server/generation_params.hpp"
#include "server/job_runner.hpp"

namespace diffuse::server {

enum class JobState { Queued, Running, Succeeded, Failed, Cancelled };
const char* to_string(JobState state);
inline bool is_final(JobState s) { return s == JobState::Succeeded || s == JobState::Failed || s == JobState::Cancelled; }

// A job as it is at one moment (a copy: reading it takes no lock).
struct JobSnapshot {
  std::string id;
  GenerationParams params;
  JobState state = JobState::Queued;
  int64_t queue_position = 0;  // 1 = next to run; 0 when not waiting
  int64_t step = 0;            // denoising steps done
  int64_t total_steps = 0;
  std::string error;           // failed or cancelled: why
  std::vector<std::string> pngs;  // succeeded: the images
  int64_t width = 0, height = 0;
  int64_t created_unix = 0;
  uint64_t version = 0;        // grows with every change, for waiting on the next one
};

struct JobQueueOptions {
  size_t capacity = 8;                // jobs waiting (not running) at most
  double retention_seconds = 600;     // finished jobs stay readable this long
  size_t max_retained = 256;          // and at most this many of them
};

struct QueueCounts {
  size_t queued = 0, running = 0, retained = 0;  // retained: jobs the queue knows (any state)
  size_t workers = 0;
  uint64_t accepted = 0, rejected = 0, succeeded = 0, failed = 0, cancelled = 0;
};

class JobQueue {
 public:
  JobQueue(JobQueueOptions options, std::vector<std::unique_ptr<JobRunner>> runners);
  ~JobQueue();  // shutdown(0) if not done
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  // Accepts a job or throws ApiError: 429 (queue full, with retry_after_seconds()) or 503 (stopping).
  // `pinned`: a sync request waits for it and forgets it; it is not reaped before that.
  JobSnapshot submit(const GenerationParams& params, bool pinned = false);
  // Seconds a refused client should wait: the queue ahead of it at the recent time per job.
  int64_t retry_after_seconds() const;

  std::optional<JobSnapshot> get(const std::string& id, bool with_images = true) const;
  // Waits until the job's version passes `after_version` or it is final, up to `timeout`; nullopt if
  // the job is unknown.
  std::optional<JobSnapshot> wait_for_change(const std::string& id, uint64_t after_version,
                                             std::chrono::milliseconds timeout, bool with_images = false) const;
  // Waits until the job is final (or shutdown ends it); nullopt if unknown.
  std::optional<JobSnapshot> wait_until_done(const std::string& id) const;
  // A waiting job ends cancelled now; a running one at its next step. False if unknown or final.
  bool cancel(const std::string& id, const std::string& why = "cancelled by request");
  // Drops a finished job (a sync request has answered); a job not final is cancelled first.
  void forget(const std::string& id);

  QueueCounts counts() const;
  std::vector<std::string> describe_workers() const;

  // Stops taking jobs (503), cancels the waiting ones, gives running ones `grace` to finish, then
  // cancels them at their next step, and joins the workers. Idempotent.
  void shutdown(std::chrono::duration<double> grace);

 private:
  struct Job;
  void work(size_t worker);
  void finish(Job& job, JobState state, std::string error);
  void reap_locked();  // forgets finished jobs past retention
  JobSnapshot snapshot_locked(const Job& job, bool with_images) const;

  JobQueueOptions options_;
  std::vector<std::unique_ptr<JobRunner>> runners_;
  std::vector<std::thread> workers_;
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;  // any job changed, or a job arrived, or stopping
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::deque<std::shared_ptr<Job>> waiting_;
  size_t running_ = 0;
  bool stopping_ = false;
  bool joined_ = false;
  double seconds_per_job_ = 0;  // moving average, for Retry-After
  QueueCounts totals_;
  uint64_t next_id_ = 0;
};

}  // namespace diffuse::server
