#include "drdm/engine/training_engine.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <fcntl.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "core/out_of_memory.h"
#include "core/seeds.h"
#include "drdm/core/interrupt.h"
#include "drdm/core/log.h"
#include "drdm/engine/distributed.h"
#include "drdm/io/text_file.h"
#include "engine/progress.h"
#include "io/atomic_file.h"
#include "io/files.h"

namespace drdm {
namespace {

constexpr const char* kCheckpointFormat = "libdrdm-checkpoint-1";

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + path + "'");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// torch.save's zip archive of `value`, streamed into the new file `file` (no copy in memory).
/// PyTorchStreamWriter ends the archive in its destructor, and after a failed write it throws
/// there ("unexpected pos"), which ends the process. So its writer function never fails: it keeps
/// the first error and drops the bytes after it; the error is thrown once the archive is closed.
/// A writer left by an exception is abandoned, not destroyed.
void write_archive(const std::string& file, const std::string& what, const c10::IValue& value) {
  std::vector<char> pickle;
  torch::jit::Pickler pickler(
      [&](const char* p, size_t n) { pickle.insert(pickle.end(), p, p + n); });
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("'" + what + "': cannot create: " + std::strerror(errno));
  int error = 0;
  auto writer =
      std::make_unique<caffe2::serialize::PyTorchStreamWriter>([&](const void* p, size_t n) {
        for (auto [b, left] = std::pair{static_cast<const char*>(p), n}; error == 0 && left > 0;) {
          const ssize_t k = ::write(fd, b, left);
          if (k < 0 && errno == EINTR) continue;
          if (k <= 0)
            error = k < 0 ? errno : ENOSPC;
          else
            b += k, left -= static_cast<size_t>(k);
        }
        return n;
      });
  try {
    torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(),
                                       *writer);
    writer->writeEndOfFile();
  } catch (...) {
    (void)writer.release();
    ::close(fd);
    throw;
  }
  writer.reset();
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error != 0) throw std::runtime_error("'" + what + "': cannot write: " + std::strerror(error));
}

void write_bytes_atomically(const std::string& path, const std::vector<char>& bytes) {
  detail::write_via_temporary(path, [&](const std::string& tmp) {
    detail::write_file_checked(tmp, bytes.data(), bytes.size(), path);
  });
}

c10::Dict<std::string, at::Tensor> to_dict(const TensorMap& state) {
  c10::Dict<std::string, at::Tensor> d;
  for (const auto& [k, v] : state) d.insert(k, v.detach().cpu());
  return d;
}

TensorMap from_dict(const c10::IValue& v) {
  TensorMap out;
  for (const auto& e : v.toGenericDict()) out[e.key().toStringRef()] = e.value().toTensor();
  return out;
}

c10::IValue unpickle(const std::string& path) {
  if (!detail::file_exists(path))
    throw std::runtime_error("model file '" + path + "' does not exist");
  try {
    return torch::jit::pickle_load(read_bytes(path));
  } catch (const std::exception& e) {
    throw std::runtime_error("'" + path +
                             "' is not a libdrdm model or checkpoint (cannot unpickle: " +
                             std::string(e.what()).substr(0, 200) + ")");
  }
}

void read_adam(const c10::impl::GenericDict& d, Checkpoint& c) {
  if (!d.contains("adam_step")) return;
  c.adam_step = d.at("adam_step").toInt();
  for (const auto& t : d.at("adam_exp_avg").toTensorList()) c.exp_avg.push_back(t);
  for (const auto& t : d.at("adam_exp_avg_sq").toTensorList()) c.exp_avg_sq.push_back(t);
}

std::string drop_lines_after(const std::string& path, int64_t step) {
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    const auto pos = line.find("\"step\":");
    if (pos != std::string::npos && std::stoll(line.substr(pos + 7)) <= step) kept += line + "\n";
  }
  return kept;
}

}  // namespace

uint64_t stream_seed(uint64_t seed, int64_t step, uint64_t purpose) {
  using detail::splitmix64;
  return splitmix64(splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(step)) ^
                    (purpose * 0x632BE59BD9B4E019ULL));
}

void save_checkpoint(const std::string& path, const std::string& kind, const std::string& config,
                     int64_t step, const TensorMap& model, const Adam* adam) {
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert("format", std::string(kCheckpointFormat));
  d.insert("kind", kind);
  d.insert("config", config);
  d.insert("step", c10::IValue(step));
  d.insert("model", c10::IValue(to_dict(model)));
  if (adam) {
    c10::List<at::Tensor> m, v;
    for (const auto& t : adam->exp_avg()) m.push_back(t.cpu());
    for (const auto& t : adam->exp_avg_sq()) v.push_back(t.cpu());
    d.insert("adam_exp_avg", c10::IValue(m));
    d.insert("adam_exp_avg_sq", c10::IValue(v));
    d.insert("adam_step", c10::IValue(adam->steps()));
  }
  detail::naming_out_of_memory("writing '" + path + "'", [&] {
    detail::write_via_temporary(path, [&](const std::string& tmp) { write_archive(tmp, path, d); });
  });
}

Checkpoint read_checkpoint(const std::string& path, const std::string& expected_kind) {
  const auto root = unpickle(path);
  const std::string not_ours = "'" + path + "' is not a libdrdm model or checkpoint";
  if (!root.isGenericDict()) throw std::runtime_error(not_ours);
  const auto d = root.toGenericDict();
  if (!d.contains("format") || !d.at("format").isString() ||
      d.at("format").toStringRef() != kCheckpointFormat)
    throw std::runtime_error(not_ours + " (format tag missing or unknown)");
  Checkpoint c;
  try {
    // Files from before the engine carry no kind: they are DRDM recovery networks.
    c.kind = d.contains("kind") ? d.at("kind").toStringRef() : std::string("drdm");
    c.config = d.at("config").toStringRef();
    c.step = d.at("step").toInt();
    c.model = from_dict(d.at("model"));
    read_adam(d, c);
  } catch (const c10::Error& e) {
    throw std::runtime_error("'" + path +
                             "' is damaged: " + std::string(e.what_without_backtrace()));
  }
  if (!expected_kind.empty() && c.kind != expected_kind)
    throw std::runtime_error("'" + path + "' holds a '" + c.kind + "' model, not a '" +
                             expected_kind + "' model");
  return c;
}

RunSpec run_spec(const TrainSection& train, const std::string& output_dir, const std::string& kind,
                 const std::string& config, std::function<std::string(const std::string&)> identity,
                 bool resume, bool progress) {
  RunSpec spec;
  spec.output_dir = output_dir;
  spec.kind = kind;
  spec.config = config;
  spec.resume_identity = std::move(identity);
  spec.steps = train.steps;
  spec.checkpoint_every = train.checkpoint_every;
  spec.log_every = train.log_every;
  spec.samples_per_step = train.batch_size;
  spec.validate_every = train.validate_every;
  spec.patience = train.patience;
  spec.resume = resume;
  spec.progress = progress;
  return spec;
}

TrainingRun::TrainingRun(RunSpec spec, std::function<TensorMap()> weights,
                         std::function<void(const TensorMap&)> load, Adam& adam)
    : spec_(std::move(spec)), weights_(std::move(weights)), load_(std::move(load)), adam_(adam) {
  if (!spec_.resume_identity) spec_.resume_identity = [](const std::string& c) { return c; };
  metrics_path_ = spec_.output_dir + "/metrics.jsonl";
}

int64_t TrainingRun::start() {
  const auto& w = dist::world();
  bool ok = false;
  try {
    start_here();
    ok = true;
  } catch (...) {
    w.agree(false, "starting the run");  // the other ranks stop too, naming this one
    throw;
  }
  w.agree(ok, "starting the run");
  return first_step_;
}

// Every rank reads the checkpoint it resumes from; rank 0 alone writes.
void TrainingRun::start_here() {
  const auto checkpoint = spec_.output_dir + "/checkpoint.pt";
  if (spec_.resume) {
    if (!detail::file_exists(checkpoint))
      throw std::runtime_error("--resume: no checkpoint at '" + checkpoint + "'");
    auto ck = read_checkpoint(checkpoint, spec_.kind);
    if (spec_.resume_identity(ck.config) != spec_.resume_identity(spec_.config))
      throw std::runtime_error("cannot resume from '" + checkpoint +
                               "': the config differs from the one it was trained with (only the " +
                               "step count may change); see " + spec_.output_dir + "/config.json");
    if (ck.adam_step < 0)
      throw std::runtime_error("cannot resume from '" + checkpoint +
                               "': it has no optimiser state");
    check_steps(ck.step, checkpoint);
    load_(ck.model);
    try {
      adam_.load_state(ck.adam_step, ck.exp_avg, ck.exp_avg_sq);
    } catch (const c10::Error& e) {
      throw std::runtime_error("cannot resume from '" + checkpoint +
                               "': its optimiser state does not fit this network: " +
                               std::string(e.what_without_backtrace()));
    }
    first_step_ = ck.step;
    log::info("resuming from " + checkpoint + " at step " + std::to_string(first_step_));
  }
  started_ = true;
  load_validation_history();
  if (!dist::world().writer()) return;
  detail::make_dirs(spec_.output_dir);
  write_text_atomically(spec_.output_dir + "/config.json", spec_.config + "\n");
  write_text_atomically(metrics_path_,
                        spec_.resume ? drop_lines_after(metrics_path_, first_step_) : "");
}

// A resume cannot train backwards: fewer steps than the checkpoint has done
// would leave config.json disagreeing with the checkpoint and model.pt.
void TrainingRun::check_steps(int64_t checkpoint_step, const std::string& checkpoint) const {
  if (spec_.steps >= checkpoint_step) return;
  // No "--resume": seg_fewshot and reg_synth resume by themselves.
  throw std::runtime_error(
      "cannot resume: " + spec_.steps_key + " = " + std::to_string(spec_.steps) + " is below the " +
      std::to_string(checkpoint_step) + " steps that '" + checkpoint +
      "' has already trained; give " + spec_.steps_key + " >= " + std::to_string(checkpoint_step) +
      ", or train into a new output folder");
}

void TrainingRun::save(int64_t done) {
  if (!dist::world().writer()) return;
  const auto w = weights_();
  save_checkpoint(spec_.output_dir + "/checkpoint.pt", spec_.kind, spec_.config, done, w, &adam_);
  save_checkpoint(spec_.output_dir + "/model.pt", spec_.kind, spec_.config, done, w, nullptr);
}

bool TrainingRun::out_of_time(int64_t done, double seconds) const {
  if (spec_.max_seconds <= 0 || done == spec_.steps || done % spec_.log_every != 0) return false;
  std::vector<double> over{seconds >= spec_.max_seconds ? 1.0 : 0.0};  // ranks' clocks differ
  dist::world().average(over, "agreeing on the time limit at step " + std::to_string(done));
  return over[0] > 0;
}

void TrainingRun::accumulate(const std::vector<StepMetric>& metrics) {
  if (window_.empty()) {
    window_ = metrics;
    return;
  }
  for (size_t i = 0; i < metrics.size() && i < window_.size(); ++i)
    window_[i].value = metrics[i].average ? window_[i].value + metrics[i].value : metrics[i].value;
}

void TrainingRun::log_window(int64_t done, double seconds) {
  average_window(done);
  std::ostringstream line;
  line << "{\"step\":" << done << ",\"loss\":" << window_loss_ / window_n_;
  for (const auto& m : window_)
    line << ",\"" << m.name << "\":" << (m.average ? m.value / window_n_ : m.value);
  line << ",\"seconds_per_step\":" << seconds / window_n_
       << ",\"images_per_second\":" << window_n_ * spec_.samples_per_step / seconds
       << ",\"elapsed_seconds\":" << elapsed_at_start_ << "}";
  if (dist::world().writer()) detail::append_file_checked(metrics_path_, line.str() + "\n");
  last_loss_ = window_loss_ / window_n_;
  window_.clear();
  window_loss_ = 0;
  window_n_ = 0;
}

// The window's metrics are each rank's share: their mean over the ranks is
// the global batch's (equal shares). The loss is already global (descend).
void TrainingRun::average_window(int64_t done) {
  const auto& w = dist::world();
  if (!w.distributed()) return;
  std::vector<double> values;
  for (const auto& m : window_) values.push_back(m.value);
  w.average(values, "averaging the metrics of step " + std::to_string(done));
  for (size_t i = 0; i < values.size(); ++i) window_[i].value = values[i];
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

RunSummary initial_summary(const RunSpec& spec, int64_t first_step) {
  return RunSummary{first_step,
                    spec.steps,
                    0,
                    0,
                    spec.output_dir + "/checkpoint.pt",
                    spec.output_dir + "/model.pt"};
}

// The checkpoint is at spec.steps already: model.pt is (re)written from it.
RunSummary nothing_to_do(const RunSpec& spec, const std::function<TensorMap()>& weights,
                         const RunSummary& summary) {
  log::info("nothing to do: the checkpoint is at step " + std::to_string(summary.first_step));
  const auto model = spec.output_dir + "/model.pt";
  if (dist::world().writer())
    save_checkpoint(model, spec.kind, spec.config, summary.first_step, weights(), nullptr);
  dist::world().agree(true, "writing " + model);  // every rank may read it from here on
  return summary;
}

[[noreturn]] void throw_non_finite(double loss, int64_t step, const std::string& checkpoint,
                                   const std::string& lr_key) {
  const bool kept = detail::file_exists(checkpoint);
  throw std::runtime_error("the loss became " + std::to_string(loss) + " at step " +
                           std::to_string(step) +
                           "; training stopped. The last good checkpoint is kept" +
                           (kept ? " at '" + checkpoint + "'" : " (none was written yet)") +
                           ". Try a smaller " + lr_key + ".");
}

void log_time_limit(int64_t done, int64_t steps) {
  log::info("time limit reached: stopped at step " + std::to_string(done) + " of " +
            std::to_string(steps) + "; --resume continues from there");
}

}  // namespace

RunSummary TrainingRun::run(const std::function<StepResult(int64_t)>& step,
                            const std::function<void(int64_t)>& after) {
  if (!started_) start();
  const auto begin = Clock::now();
  RunSummary summary = initial_summary(spec_, first_step_);
  if (first_step_ >= spec_.steps) {
    finish_validation(summary);
    return nothing_to_do(spec_, weights_, summary);
  }
  // The starting weights are scored too: a fine-tuning that never beats them keeps them.
  if (validating() && first_step_ == 0 && history_.empty()) validate_now(0);
  const bool writer = dist::world().writer();
  detail::ProgressBar bar(spec_.label, spec_.steps, first_step_, spec_.progress && writer);
  auto window_begin = Clock::now();
  for (int64_t s = first_step_; s < spec_.steps; ++s) {
    throw_if_interrupted();
    const auto r = step(s);
    if (!std::isfinite(r.loss)) {
      bar.finish();
      throw_non_finite(r.loss, s, summary.checkpoint, spec_.lr_key);
    }
    accumulate(r.metrics);
    window_loss_ += r.loss;
    ++window_n_;
    const int64_t done = s + 1;
    char loss_text[32];
    std::snprintf(loss_text, sizeof loss_text, "loss %.4f", window_loss_ / window_n_);
    bar.update(done, loss_text);
    if (done % spec_.log_every == 0 || done == spec_.steps) {
      elapsed_at_start_ = seconds_since(begin);
      log_window(done, seconds_since(window_begin));
      window_begin = Clock::now();
    }
    if (after && writer) after(done);
    const bool check = validating() && (done % spec_.validate_every == 0 || done == spec_.steps);
    summary.stopped_early = check && validate_now(done);
    const bool timed_out = out_of_time(done, seconds_since(begin));
    if (done % spec_.checkpoint_every == 0 || done == spec_.steps || timed_out || check) save(done);
    if (timed_out || summary.stopped_early) {
      summary.steps = done;
      if (timed_out) log_time_limit(done, spec_.steps);
      break;
    }
  }
  bar.finish();
  finish_validation(summary);
  dist::world().agree(true, "writing " + summary.model);  // every rank may read it from here on
  summary.seconds = seconds_since(begin);
  summary.last_loss = last_loss_;
  log::info("trained to step " + std::to_string(summary.steps) + " in " +
            detail::format_duration(summary.seconds) + "; model: " + summary.model);
  return summary;
}

double clip_gradients(Adam& adam, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : adam.parameters())
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0;
  auto squares = at::zeros({}, grads.front().options().dtype(at::kDouble));
  for (const auto& g : grads) squares = squares + g.to(at::kDouble).square().sum();
  const double norm = std::sqrt(squares.item<double>());
  // A non-finite norm is left alone: the loss check stops the run.
  if (std::isfinite(norm) && norm > max_norm)
    for (auto& g : grads) g.mul_(max_norm / norm);
  return norm;
}

StepResult descend(Adam& adam, const torch::Tensor& loss, const TrainSection& train, int64_t step) {
  const auto& w = dist::world();
  // Data-parallel: the loss of the global batch (every rank sees the same
  // value, so all take the step or all stop) and the mean of the gradients.
  std::vector<double> value{loss.item<double>()};
  w.average(value, "averaging the loss of step " + std::to_string(step));
  if (!std::isfinite(value[0])) return {value[0], {}};
  adam.zero_grad();
  w.backward(loss, adam.parameters(), "averaging the gradients of step " + std::to_string(step));
  const double lr = learning_rate(train, step);
  StepResult r{value[0], {{"lr", lr, false}}};
  if (train.grad_clip > 0)
    r.metrics.push_back({"grad_norm", clip_gradients(adam, train.grad_clip)});
  adam.step(lr);
  return r;
}

}  // namespace drdm
