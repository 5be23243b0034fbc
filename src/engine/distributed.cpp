#include "drdm/engine/distributed.h"

#include <ATen/ATen.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "core/parse_integer.h"
#include "drdm/core/interrupt.h"
#include "drdm/core/log.h"
#include "engine/dist/backends.h"
#include "io/atomic_file.h"

namespace drdm::dist {
namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name, int lo, int hi) {
  const char* v = env(name);
  if (!v) throw std::invalid_argument(std::string("environment variable ") + name + " is not set");
  const auto x = drdm::detail::parse_integer(v);
  if (!x || *x < lo || *x > hi)
    throw std::invalid_argument(std::string("environment variable ") + name + " = '" + v +
                                "' is not an integer in [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "]");
  return static_cast<int>(*x);
}

std::string message_of(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

void read_master(WorldSpec& w, const std::string& master) {
  if (env("MASTER_ADDR") || master.empty()) {
    if (!env("MASTER_ADDR"))
      throw std::invalid_argument(
          "environment variable MASTER_ADDR is not set (the address of rank 0's host)");
    w.master_addr = env("MASTER_ADDR");
    w.master_port = env_int("MASTER_PORT", 1, 65535);
    return;
  }
  const auto colon = master.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw std::invalid_argument("master '" + master + "' must be host:port");
  w.master_addr = master.substr(0, colon);
  const std::string port = master.substr(colon + 1);
  const auto p = drdm::detail::parse_integer(port);
  if (!p || *p < 1 || *p > 65535)
    throw std::invalid_argument("master '" + master +
                                "': the port must be an integer in [1, 65535]");
  w.master_port = static_cast<int>(*p);
}

}  // namespace

WorldSpec world_from_environment(const std::string& master) {
  WorldSpec w;
  if (env("RANK") || env("WORLD_SIZE")) {
    w.launcher = "torchrun";
    w.size = env_int("WORLD_SIZE", 1, 1 << 20);
    w.rank = env_int("RANK", 0, w.size - 1);
    w.local_rank = env("LOCAL_RANK") ? env_int("LOCAL_RANK", 0, 1 << 16) : 0;
  } else if (env("SLURM_PROCID") && env("SLURM_NTASKS")) {
    w.launcher = "slurm";
    w.size = env_int("SLURM_NTASKS", 1, 1 << 20);
    w.rank = env_int("SLURM_PROCID", 0, w.size - 1);
    w.local_rank = env("SLURM_LOCALID") ? env_int("SLURM_LOCALID", 0, 1 << 16) : 0;
  } else {
    return w;
  }
  if (w.size == 1) return w;  // a world of one needs no rendezvous (nor a master)
  read_master(w, master);
  // torchrun's agent already serves a TCPStore on MASTER_PORT; keys of a
  // restarted attempt are kept apart from those of the one before.
  w.agent_store = env("TORCHELASTIC_USE_AGENT_STORE") &&
                  std::string(env("TORCHELASTIC_USE_AGENT_STORE")) == "True";
  w.key_prefix =
      w.agent_store
          ? std::string("/worker/attempt_") +
                (env("TORCHELASTIC_RESTART_COUNT") ? env("TORCHELASTIC_RESTART_COUNT") : "0") +
                "/drdm"
          : "drdm";  // c10d::PrefixStore adds the "/"
  return w;
}

/// DRDM_DIST_BUCKET_MB (default 1): the gradient bucket size, refused unless a number of MB in
/// [0.01, 1024], when the world is joined (not at the first step, after the run folder is made).
double bucket_bytes() {
  const char* v = env("DRDM_DIST_BUCKET_MB");
  if (!v) return 1 << 20;
  char* end = nullptr;
  const double mb = std::strtod(v, &end);
  if (*end != '\0' || !(mb >= 0.01 && mb <= 1024))
    throw std::invalid_argument(std::string("environment variable DRDM_DIST_BUCKET_MB = '") + v +
                                "' must be a number of megabytes in [0.01, 1024]");
  return mb * (1 << 20);
}

std::chrono::milliseconds dist_timeout(double config_seconds) {
  double s = config_seconds;
  std::string from = "train.dist_timeout";
  if (const char* v = env("DRDM_DIST_TIMEOUT")) {
    char* end = nullptr;
    s = std::strtod(v, &end);
    from = "environment variable DRDM_DIST_TIMEOUT";
    if (*end != '\0') s = NAN;
  }
  if (!(s > 0 && s <= 86400))
    throw std::invalid_argument(from + " must be a number of seconds in (0, 86400]");
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(s * 1000)));
}

std::string backend_for(const torch::Device& device) {
  if (const char* v = env("DRDM_DIST_BACKEND")) {
    const std::string b = v;
    if (b != "gloo" && b != "nccl")
      throw std::invalid_argument("environment variable DRDM_DIST_BACKEND = '" + b +
                                  "' must be gloo or nccl");
    if (b == "nccl" && !device.is_cuda())
      throw std::invalid_argument("DRDM_DIST_BACKEND = nccl needs a CUDA device (training on " +
                                  device.str() + ")");
    return b;
  }
  return device.is_cuda() ? "nccl" : "gloo";
}

namespace {

/// Waits for a Gloo collective in short slices: SIGINT / SIGTERM act at once, not when the
/// timeout ends (NCCL's wait only orders the GPU streams and returns).
void poll_until_done(c10d::Work& work, std::chrono::milliseconds timeout) {
  const auto begin = std::chrono::steady_clock::now();
  for (auto waited = begin - begin; !work.isCompleted() && waited < timeout;
       waited = std::chrono::steady_clock::now() - begin) {
    throw_if_interrupted();
    std::this_thread::sleep_for(waited < std::chrono::milliseconds(20)
                                    ? std::chrono::microseconds(50)
                                    : std::chrono::microseconds(2000));
  }
}

void wait_for(const c10::intrusive_ptr<c10d::Work>& work, const World& w,
              std::chrono::milliseconds timeout, const std::string& what) {
  try {
    if (w.backend() == "gloo") poll_until_done(*work, timeout);
    work->wait(timeout);
  } catch (const Interrupted&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(
        "rank " + std::to_string(w.rank()) + " of " + std::to_string(w.size()) + ": " + what +
        " failed; another rank stopped or cannot be reached (its own message says why): " +
        message_of(e));
  }
}

}  // namespace

struct World::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  torch::Device device{torch::kCPU};
  std::chrono::milliseconds timeout{0};
  double bucket_bytes = 1 << 20;
  std::mutex mutex;
  std::map<std::pair<const void*, size_t>, std::weak_ptr<World::Buckets>>
      buckets;  // per parameter set
};

/// The gradient buckets of one parameter list. Each parameter's hook copies
/// its gradient into its bucket while the backward pass runs; the last one to
/// arrive starts the bucket's all-reduce. The hooks hold this state (the
/// parameters keep their hooks), the world only a weak reference.
struct World::Buckets {
  struct Bucket {
    std::vector<size_t> members;
    at::Tensor flat;
    size_t waiting = 0;
    c10::intrusive_ptr<c10d::Work> work;
  };
  c10::intrusive_ptr<c10d::Backend> backend;
  std::vector<Bucket> list;
  std::vector<size_t> bucket_of;
  std::vector<int64_t> offset;
  std::vector<bool> ready;
  std::mutex mutex;
  bool armed = false;
  size_t next = 0;  // every rank must start the buckets in the same order: by index

  void start_ready() {
    while (next < list.size() && list[next].waiting == 0) {
      std::vector<at::Tensor> one{list[next].flat};
      list[next++].work = backend->allreduce(one);
    }
  }

  void arrive(size_t i, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!armed || ready[i]) return;
    auto& b = list[bucket_of[i]];
    b.flat.narrow(0, offset[i], grad.numel()).copy_(grad.reshape({-1}));
    ready[i] = true;
    --b.waiting;
    start_ready();
  }

  void arm() {
    std::lock_guard<std::mutex> lock(mutex);
    std::fill(ready.begin(), ready.end(), false);
    for (auto& b : list) b.waiting = b.members.size(), b.work.reset();
    next = 0;
    armed = true;
  }

  /// After the backward pass: parameters without a gradient count as zero,
  /// and the buckets not started yet start now, in order.
  void start_rest(const std::vector<torch::Tensor>& params) {
    for (auto& b : list)
      for (auto k : b.members)
        if (!ready[k]) b.flat.narrow(0, offset[k], params[k].numel()).zero_();
    for (auto& b : list) b.waiting = 0;
    start_ready();
  }
};

namespace {

/// True when a TCP connection to `a` opens within `wait`.
bool connects(const addrinfo& a, std::chrono::milliseconds wait) {
  const int fd = ::socket(a.ai_family, a.ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a.ai_protocol);
  if (fd < 0) return false;
  int err = ::connect(fd, a.ai_addr, a.ai_addrlen) == 0 ? 0 : errno;
  if (err == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    socklen_t len = sizeof err;
    err = ::poll(&p, 1, static_cast<int>(wait.count())) == 1 &&
                  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0
              ? err
              : ETIMEDOUT;
  }
  ::close(fd);
  return err == 0;
}

/// A client waits until the master's port accepts connections, trying every 200 ms, so that a
/// signal acts at once (TCPStore's own retries cannot be interrupted) and c10d logs no retries.
void wait_until_reachable(const WorldSpec& w, std::chrono::steady_clock::time_point end) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  for (;;) {
    throw_if_interrupted();
    addrinfo* found = nullptr;
    bool open = false;
    if (::getaddrinfo(w.master_addr.c_str(), std::to_string(w.master_port).c_str(), &hints,
                      &found) == 0) {
      for (auto* a = found; a && !open; a = a->ai_next)
        open = connects(*a, std::chrono::milliseconds(200));
      ::freeaddrinfo(found);
    }
    if (open || std::chrono::steady_clock::now() >= end) return;  // TCPStore then says why
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

c10::intrusive_ptr<c10d::Store> connect_store(const WorldSpec& w,
                                              std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(w.master_port);
  o.isServer = w.rank == 0 && !w.agent_store;
  o.numWorkers = std::nullopt;  // arrivals are checked below, with a clearer message
  o.waitWorkers = false;
  o.timeout = timeout;
  const std::string where = w.master_addr + ":" + std::to_string(w.master_port);
  try {
    if (!o.isServer) {
      const auto end = std::chrono::steady_clock::now() + timeout;
      wait_until_reachable(w, end);
      o.timeout = std::max(std::chrono::duration_cast<std::chrono::milliseconds>(
                               end - std::chrono::steady_clock::now()),
                           std::chrono::milliseconds(1000));
    }
    auto tcp = c10::make_intrusive<c10d::TCPStore>(w.master_addr, o);
    tcp->setTimeout(timeout);
    return c10::make_intrusive<c10d::PrefixStore>(w.key_prefix, tcp);
  } catch (const Interrupted&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(o.isServer ? "rank 0 could not serve the rendezvous at "
                                                    : "could not reach the master at ") +
                             where + " within " + std::to_string(timeout.count() / 1000) +
                             " s (MASTER_ADDR / MASTER_PORT; " +
                             "is rank 0 running, is the port free and open?): " + message_of(e));
  }
}

std::string get_key(c10d::Store& store, const std::string& key, std::chrono::milliseconds timeout) {
  // Polled rather than store.wait(): a signal acts within 50 ms, not when the timeout ends.
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!store.check({key})) {
    throw_if_interrupted();
    if (std::chrono::steady_clock::now() >= end)
      throw std::runtime_error("timed out waiting for '" + key + "'");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const auto v = store.get(key);
  return std::string(v.begin(), v.end());
}

std::string size_of_rank(c10d::Store& store, const WorldSpec& w, int r,
                         std::chrono::milliseconds timeout) {
  try {
    return get_key(store, "size/" + std::to_string(r), timeout);
  } catch (const Interrupted&) {
    throw;
  } catch (const c10::DistNetworkError& e) {
    throw std::runtime_error(
        "lost the connection to rank 0 at " + w.master_addr + ":" + std::to_string(w.master_port) +
        " while joining (rank 0 stopped; its message says why): " + message_of(e));
  } catch (const std::exception& e) {
    throw std::runtime_error(
        "rank " + std::to_string(r) + " of " + std::to_string(w.size) + " did not join within " +
        std::to_string(timeout.count() / 1000) +
        " s (was it started, with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE?): " +
        message_of(e));
  }
}

/// Every rank states its WORLD_SIZE; rank 0 waits for all of them, the
/// others for rank 0's. A missing rank or a disagreement is an error that
/// says which. Rank 0 serves the store: before it stops over a disagreement
/// it gives the other ranks a few seconds to read its own size, so that they
/// report the disagreement too rather than a lost connection.
void check_arrivals(c10d::Store& store, const WorldSpec& w, std::chrono::milliseconds timeout) {
  const std::string mine = std::to_string(w.size);
  store.set("size/" + std::to_string(w.rank), std::vector<uint8_t>(mine.begin(), mine.end()));
  for (int r = 0; r < (w.rank == 0 ? w.size : 1); ++r) {
    if (r == w.rank) continue;
    const std::string theirs = size_of_rank(store, w, r, timeout);
    if (w.rank != 0) store.add("size_read", 1);
    if (theirs == mine) continue;
    for (int i = 0; w.rank == 0 && i < 50 && store.add("size_read", 0) < r; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    throw std::runtime_error("WORLD_SIZE differs between ranks: rank " + std::to_string(r) +
                             " has " + theirs + ", rank " + std::to_string(w.rank) + " has " +
                             mine + "; start every rank with the same WORLD_SIZE");
  }
}

}  // namespace

World::World() = default;
World::~World() = default;

World::World(WorldSpec spec, const torch::Device& device, std::chrono::milliseconds timeout)
    : spec_(std::move(spec)), backend_(backend_for(device)), impl_(std::make_unique<Impl>()) {
  impl_->device = backend_ == "nccl" ? device : torch::Device(torch::kCPU);
  impl_->timeout = timeout;
  impl_->bucket_bytes = bucket_bytes();
  impl_->store = connect_store(spec_, timeout);
  check_arrivals(*impl_->store, spec_, timeout);
  auto pg_store = c10::make_intrusive<c10d::PrefixStore>(backend_, impl_->store);
  try {
    impl_->backend = backend_ == "nccl"
                         ? detail::make_nccl_backend(pg_store, spec_.rank, spec_.size, timeout)
                         : detail::make_gloo_backend(pg_store, spec_.rank, spec_.size, timeout);
  } catch (const std::exception& e) {
    throw std::runtime_error("could not start the " + backend_ + " backend on rank " +
                             std::to_string(spec_.rank) + ": " + message_of(e));
  }
}

std::pair<int64_t, int64_t> World::share(int64_t global_batch, const std::string& key) const {
  if (global_batch % spec_.size != 0)
    throw std::invalid_argument(key + " = " + std::to_string(global_batch) +
                                " is the global batch; it must be a " +
                                "multiple of the world size " + std::to_string(spec_.size));
  const int64_t n = global_batch / spec_.size;
  return {spec_.rank * n, (spec_.rank + 1) * n};
}

std::shared_ptr<World::Buckets> World::buckets_for(const std::vector<torch::Tensor>& params) const {
  const std::pair<const void*, size_t> key{params.front().unsafeGetTensorImpl(), params.size()};
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (auto known = impl_->buckets[key].lock()) return known;
  const double cap_bytes = impl_->bucket_bytes;
  auto state = std::make_shared<Buckets>();
  state->backend = impl_->backend;
  state->bucket_of.resize(params.size());
  state->offset.resize(params.size());
  state->ready.resize(params.size());
  // Autograd produces the last layers' gradients first: buckets fill from the back.
  int64_t filled = 0;
  for (size_t k = params.size(); k-- > 0;) {
    const auto n = params[k].numel();
    if (state->list.empty() || (filled > 0 && static_cast<double>(filled + n) * 4 > cap_bytes)) {
      state->list.emplace_back();
      filled = 0;
    }
    state->list.back().members.push_back(k);
    state->bucket_of[k] = state->list.size() - 1;
    state->offset[k] = filled;
    filled += n;
  }
  for (auto& b : state->list) {
    int64_t total = 0;
    for (auto k : b.members) total += params[k].numel();
    b.flat =
        at::zeros({total}, params.front().options().device(impl_->device).requires_grad(false));
  }
  for (size_t k = 0; k < params.size(); ++k) {
    std::weak_ptr<Buckets> weak = state;
    params[k].register_hook([weak, k](const at::Tensor& grad) {
      if (auto s = weak.lock()) s->arrive(k, grad);
    });
  }
  impl_->buckets[key] = state;
  return state;
}

void World::backward(const torch::Tensor& loss, const std::vector<torch::Tensor>& params,
                     const std::string& what) const {
  if (!impl_ || params.empty()) {
    loss.backward();
    return;
  }
  auto state = buckets_for(params);
  state->arm();
  loss.backward();
  std::lock_guard<std::mutex> lock(state->mutex);
  state->armed = false;
  at::NoGradGuard no_grad;
  state->start_rest(params);
  for (auto& b : state->list) {
    wait_for(b.work, *this, impl_->timeout, what);
    b.flat.div_(spec_.size);
    for (auto k : b.members)
      if (state->ready[k] && params[k].grad().defined())
        params[k].mutable_grad().copy_(
            b.flat.narrow(0, state->offset[k], params[k].numel()).view(params[k].sizes()));
  }
}

void World::average(std::vector<double>& values, const std::string& what) const {
  if (!impl_ || values.empty()) return;
  std::vector<at::Tensor> bucket{at::tensor(values, at::kDouble).to(impl_->device)};
  wait_for(impl_->backend->allreduce(bucket), *this, impl_->timeout, what);
  const at::Tensor mean = bucket[0].div(spec_.size).cpu();
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = mean[static_cast<int64_t>(i)].item<double>();
}

void World::agree(bool ok, const std::string& what) const {
  if (!impl_) return;
  // The smallest failing rank: MIN over (ok ? size : rank).
  std::vector<at::Tensor> t{
      at::full({1}, ok ? spec_.size : spec_.rank, at::kLong).to(impl_->device)};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MIN;
  wait_for(impl_->backend->allreduce(t, o), *this, impl_->timeout, what);
  const auto first = t[0].item<int64_t>();
  if (first < spec_.size && first != spec_.rank)
    throw std::runtime_error(what + " failed on rank " + std::to_string(first) +
                             " (its own message says why)");
}

namespace {

std::mutex g_mutex;
World* g_world = nullptr;  // never destroyed: a group whose peer died can block in its destructor

}  // namespace

torch::Device join_world(const torch::Device& device, std::chrono::milliseconds timeout,
                         const std::string& master) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const auto spec = world_from_environment(master);
  torch::Device d = device;
  if (spec.launcher != "none" && d.is_cuda() && !d.has_index())
    d = torch::Device(torch::kCUDA, spec.local_rank);
  if (g_world) return d;
  if (spec.launcher == "none" || spec.size == 1) {
    if (spec.launcher != "none")
      log::info("a world of one rank (" + spec.launcher +
                "): running as one process, without a rendezvous");
    g_world = new World();
    return d;
  }
  if (spec.rank != 0) log::set_level(log::Level::kWarn);
  g_world = new World(spec, d, timeout);
  drdm::detail::set_this_process_writes(g_world->writer());
  log::info("joined a world of " + std::to_string(spec.size) + " ranks (" + spec.launcher +
            ", backend " + g_world->backend() + ", master " + spec.master_addr + ":" +
            std::to_string(spec.master_port) + ", timeout " +
            std::to_string(timeout.count() / 1000) + " s); rank 0 writes");
  return d;
}

torch::Tensor my_rows(const torch::Tensor& global_batch, const std::string& key) {
  const auto& w = world();
  if (!w.distributed()) return global_batch;
  const auto [first, last] = w.share(global_batch.size(0), key);
  return global_batch.narrow(0, first, last - first);
}

void join_for(const std::string& device_name, double config_timeout, const std::string& master) {
  const bool cuda = device_name == "cuda" || (device_name == "auto" && torch::cuda::is_available());
  const torch::Device requested = cuda ? torch::Device(torch::kCUDA)
                                       : torch::Device(device_name == "auto" ? "cpu" : device_name);
  join_world(requested, dist_timeout(config_timeout), master);
}

const World& world() {
  std::lock_guard<std::mutex> lock(g_mutex);
  static const World single;
  return g_world ? *g_world : single;
}

}  // namespace drdm::dist

namespace drdm {

torch::Device resolve_device(const std::string& name) {
  const std::string expected = "' (expected auto, cpu, cuda or cuda:N)";
  const auto& w = dist::world();
  const torch::Device gpu =
      w.distributed() ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(w.local_rank()))
                      : torch::Device(torch::kCUDA);  // one process per GPU
  if (name == "auto") return at::hasCUDA() ? gpu : torch::Device(torch::kCPU);
  if (name == "cuda" && at::hasCUDA()) return gpu;
  if (name == "cpu") return torch::kCPU;
  if (name.rfind("cuda", 0) != 0) throw std::invalid_argument("unknown device '" + name + expected);
  if (!at::hasCUDA())
    throw std::invalid_argument("device '" + name +
                                "' requested but no CUDA GPU is available (use --device cpu)");
  try {
    return torch::Device(name);
  } catch (const c10::Error&) {
    throw std::invalid_argument("unknown device '" + name + expected);
  }
}

}  // namespace drdm
