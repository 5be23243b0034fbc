/// @file Data-parallel training over PyTorch's c10d (TCPStore rendezvous,
/// Gloo on the CPU, NCCL on CUDA), launched like PyTorch's own programs:
/// `torchrun --no-python ... drdm_train ...`, `srun drdm_train ...`, or
/// processes started by hand with RANK / WORLD_SIZE / MASTER_ADDR /
/// MASTER_PORT. docs/distributed.md has the guide.
///
/// A process joins at most one world (join_world); the trainers then reach it
/// through world(): the shared training engine averages gradients and metrics
/// over it, and only rank 0 writes: in a joined world, libdrdm's file writers
/// (every atomic write: checkpoints, images, previews, JSON) do nothing on the
/// other ranks, which run the same program on the same inputs. Without launcher variables world()
/// is a one-process world and nothing changes.
#pragma once

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace drdm::dist {

/// Where this process sits in a job, as the launcher described it.
struct WorldSpec {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  std::string launcher = "none";  ///< "torchrun" (or by hand), "slurm" or "none"
  bool agent_store = false;       ///< torchrun's agent serves the store: every rank is a client
  std::string key_prefix;         ///< store keys of this attempt
};

/// The world from the environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
/// MASTER_PORT (torchrun, or set by hand); else SLURM_PROCID, SLURM_NTASKS,
/// SLURM_LOCALID with the master from MASTER_ADDR / MASTER_PORT or `master`
/// ("host:port", a config key); else a one-process world. A world of size 1
/// needs no master (a single-task Slurm job, RANK=0 WORLD_SIZE=1). Throws
/// std::invalid_argument naming the variable that is missing or wrong.
WorldSpec world_from_environment(const std::string& master = "");

/// The rendezvous and collective timeout: DRDM_DIST_TIMEOUT (seconds) when
/// set, else `config_seconds`. Throws std::invalid_argument when not in (0, 86400].
std::chrono::milliseconds dist_timeout(double config_seconds);

/// The backend for `device`: DRDM_DIST_BACKEND ("gloo" or "nccl") when set,
/// else "gloo" on the CPU and "nccl" on CUDA.
std::string backend_for(const torch::Device& device);

/// One process's view of the job.
class World {
 public:
  World();  ///< the one-process world
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return spec_.rank; }
  int size() const { return spec_.size; }
  int local_rank() const { return spec_.local_rank; }
  bool distributed() const { return impl_ != nullptr; }
  bool writer() const { return spec_.rank == 0; }  ///< rank 0 alone writes files
  const WorldSpec& spec() const { return spec_; }
  const std::string& backend() const { return backend_; }

  /// This rank's rows [first, last) of a global batch: equal shares. Throws
  /// std::invalid_argument (naming `key`) when `global_batch` is not a
  /// multiple of the world size.
  std::pair<int64_t, int64_t> share(int64_t global_batch, const std::string& key) const;

  /// Replaces each value by its mean over the ranks. `what` names the step in errors.
  void average(std::vector<double>& values, const std::string& what) const;
  /// loss.backward(), with the gradients of `params` averaged over the
  /// ranks: as autograd produces each gradient it is copied into its bucket
  /// (about DRDM_DIST_BUCKET_MB, default 1 MB), and a full bucket's
  /// all-reduce starts at once, overlapping the rest of the backward pass.
  /// Parameters without a gradient keep none. One process: loss.backward().
  void backward(const torch::Tensor& loss, const std::vector<torch::Tensor>& params,
                const std::string& what) const;
  /// Every rank says whether its part of `what` went well; throws on every
  /// rank when one did not, naming the first rank that failed.
  void agree(bool ok, const std::string& what) const;

  /// Connects (used by join_world).
  World(WorldSpec spec, const torch::Device& device, std::chrono::milliseconds timeout);

 private:
  struct Impl;
  struct Buckets;
  std::shared_ptr<Buckets> buckets_for(const std::vector<torch::Tensor>& params) const;
  WorldSpec spec_;
  std::string backend_ = "none";
  std::unique_ptr<Impl> impl_;
};

/// Joins the job described by the environment (see world_from_environment)
/// with `device`'s backend; once per process (a second call returns the same
/// world). With launcher variables, a CUDA `device` without an index becomes
/// cuda:LOCAL_RANK (one process per GPU). Logs the world; other ranks than 0
/// log warnings and errors only. Returns the device to train on.
torch::Device join_world(const torch::Device& device, std::chrono::milliseconds timeout,
                         const std::string& master = "");

/// The world joined, or the one-process world.
const World& world();

/// This rank's rows of a global batch (all of it in a one-process world);
/// `key` names the batch size in errors (see World::share).
torch::Tensor my_rows(const torch::Tensor& global_batch, const std::string& key);

/// Joins the world for a run whose config asks for `device_name` ("auto",
/// "cpu", "cuda", "cuda:N"); resolve_device then maps a bare "cuda" to
/// cuda:LOCAL_RANK in a multi-rank job.
void join_for(const std::string& device_name, double config_timeout, const std::string& master);

}  // namespace drdm::dist

namespace drdm {

/// The device a run uses: "auto" (the CUDA GPU when present, else the CPU),
/// "cpu", "cuda" (in a data-parallel job: the GPU of this process's local
/// rank) or "cuda:N"; a clear error for anything else or a missing GPU.
torch::Device resolve_device(const std::string& name);

}  // namespace drdm
