#include "drdm/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <sys/stat.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

#include "atomic_file.h"
#include "drdm/dataset.h"
#include "drdm/image_io.h"
#include "drdm/log.h"
#include "drdm/losses.h"
#include "drdm/models.h"
#include "drdm/optim.h"
#include "drdm/preview.h"
#include "drdm/spatial.h"
#include "progress.h"
#include "seeds.h"

namespace drdm {

namespace {
using detail::file_exists;
using detail::make_dirs;

constexpr const char* kCheckpointFormat = "libdrdm-checkpoint-1";

/// Independent streams for (seed, step, purpose).
uint64_t stream_seed(uint64_t seed, int64_t step, uint64_t purpose) {
  using detail::splitmix64;
  return splitmix64(splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(step)) ^
                    (purpose * 0x632BE59BD9B4E019ULL));
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + path + "'");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes_atomically(const std::string& path, const std::vector<char>& bytes) {
  detail::write_via_temporary(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) throw std::runtime_error("cannot write '" + path + "'");
  });
}

c10::Dict<std::string, at::Tensor> to_dict(const std::map<std::string, at::Tensor>& state) {
  c10::Dict<std::string, at::Tensor> d;
  for (const auto& [k, v] : state) d.insert(k, v.detach().cpu());
  return d;
}

std::map<std::string, at::Tensor> from_dict(const c10::IValue& v) {
  std::map<std::string, at::Tensor> out;
  for (const auto& e : v.toGenericDict()) out[e.key().toStringRef()] = e.value().toTensor();
  return out;
}

void save_checkpoint(const std::string& path, const TrainConfig& config, int64_t step,
                     const RecoveryNet& net, const Adam* adam) {
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert("format", std::string(kCheckpointFormat));
  d.insert("config", to_json(config));
  d.insert("step", c10::IValue(step));
  d.insert("model", c10::IValue(to_dict(net.state())));
  if (adam) {
    c10::List<at::Tensor> m, v;
    for (const auto& t : adam->exp_avg()) m.push_back(t.cpu());
    for (const auto& t : adam->exp_avg_sq()) v.push_back(t.cpu());
    d.insert("adam_exp_avg", c10::IValue(m));
    d.insert("adam_exp_avg_sq", c10::IValue(v));
    d.insert("adam_step", c10::IValue(adam->steps()));
  }
  write_bytes_atomically(path, torch::jit::pickle_save(c10::IValue(d)));
}

struct LoadedCheckpoint {
  TrainConfig config;
  int64_t step = 0;
  std::map<std::string, at::Tensor> model;
  std::vector<at::Tensor> exp_avg, exp_avg_sq;
  int64_t adam_step = -1;  // -1: no optimiser state (a model.pt)
};

LoadedCheckpoint read_checkpoint(const std::string& path) {
  if (!file_exists(path)) throw std::runtime_error("model file '" + path + "' does not exist");
  c10::IValue root;
  try {
    root = torch::jit::pickle_load(read_bytes(path));
  } catch (const std::exception& e) {
    throw std::runtime_error("'" + path +
                             "' is not a libdrdm model or checkpoint (cannot unpickle: " +
                             std::string(e.what()).substr(0, 200) + ")");
  }
  if (!root.isGenericDict())
    throw std::runtime_error("'" + path + "' is not a libdrdm model or checkpoint");
  const auto d = root.toGenericDict();
  if (!d.contains("format") || !d.at("format").isString() ||
      d.at("format").toStringRef() != kCheckpointFormat)
    throw std::runtime_error(
        "'" + path + "' is not a libdrdm model or checkpoint (format tag missing or unknown)");
  LoadedCheckpoint c;
  try {
    c.config = parse_train_config(d.at("config").toStringRef(), path + " (embedded config)");
    c.step = d.at("step").toInt();
    c.model = from_dict(d.at("model"));
    if (d.contains("adam_step")) {
      c.adam_step = d.at("adam_step").toInt();
      for (const auto& t : d.at("adam_exp_avg").toTensorList()) c.exp_avg.push_back(t);
      for (const auto& t : d.at("adam_exp_avg_sq").toTensorList()) c.exp_avg_sq.push_back(t);
    }
  } catch (const c10::Error& e) {
    throw std::runtime_error("'" + path +
                             "' is damaged: " + std::string(e.what_without_backtrace()));
  }
  return c;
}

/// Picture of a training batch: per row, original | deformed | deformed grid | |phi|,
/// then deformed | recovered one step | recovery grid | |psi_hat|.
void write_training_preview(const std::string& path, const at::Tensor& x0, const at::Tensor& xt,
                            const at::Tensor& phi, const at::Tensor& psi_hat) {
  at::NoGradGuard no_grad;
  const auto recovered = warp(xt, psi_hat);
  std::vector<at::Tensor> rows;
  const int64_t n = std::min<int64_t>(x0.size(0), 4);
  for (int64_t i = 0; i < n; ++i) {
    auto s = [&](const at::Tensor& t) {
      return t.narrow(0, i, 1).detach().to(at::kCPU, at::kFloat);
    };
    auto left = render_warp_preview(s(x0), s(xt), s(phi));
    auto right = render_warp_preview(s(xt), s(recovered), s(psi_hat));
    auto gap = at::full({3, left.size(1), 6}, 255, left.options());
    rows.push_back(at::cat({left, gap, right}, 2));
    rows.push_back(at::full({3, 6, rows.back().size(2)}, 255, left.options()));
  }
  write_rgb_png(path, at::cat(rows, 1));
}

/// train.init_from: the weights of another run (fresh optimiser, step 0).
/// The network must have the same shape; the image size may differ (the
/// network is fully convolutional), so a model can be fine-tuned at another size.
void init_weights_from(const std::string& name_or_path, const TrainConfig& config, RecoveryNet& net) {
  const auto path = resolve_model_path(name_or_path);
  auto ck = read_checkpoint(path);
  const auto want = network_options(config), have = network_options(ck.config);
  const auto describe = [](const NetworkOptions& o) {
    return std::to_string(o.dims) + "D, " + std::to_string(o.in_channels) + " channel(s), " +
           "time embedding " + std::to_string(o.time_embedding) + ", T = " +
           std::to_string(o.timesteps) + ", K = " + std::to_string(o.recursion);
  };
  if (describe(want) != describe(have))
    throw std::runtime_error("train.init_from: '" + path + "' holds a network of " +
                             describe(have) + ", but this config builds " + describe(want));
  try {
    net.load_state(ck.model);
  } catch (const c10::Error& e) {
    throw std::runtime_error("train.init_from: '" + path + "' does not fit this network: " +
                             std::string(e.what_without_backtrace()));
  }
  log::info("initialised from " + path + " (trained " + std::to_string(ck.step) +
            " steps); fresh optimiser and schedule");
}

std::string fixed(double v, int digits = 4) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

torch::Device resolve_device(const std::string& name) {
  if (name == "auto")
    return at::hasCUDA() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  if (name == "cpu") return torch::kCPU;
  if (name.rfind("cuda", 0) == 0) {
    if (!at::hasCUDA())
      throw std::invalid_argument("device '" + name +
                                  "' requested but no CUDA GPU is available (use --device cpu)");
    try {
      return torch::Device(name);
    } catch (const c10::Error&) {
      throw std::invalid_argument("unknown device '" + name +
                                  "' (expected auto, cpu, cuda or cuda:N)");
    }
  }
  throw std::invalid_argument("unknown device '" + name + "' (expected auto, cpu, cuda or cuda:N)");
}

TrainSummary train(const TrainConfig& config, const std::string& output_dir, bool resume,
                   bool progress) {
  const auto begin = std::chrono::steady_clock::now();
  const auto device = resolve_device(config.train.device);
  if (config.train.mixed_precision == "bf16" && !device.is_cuda())
    throw std::invalid_argument("train.mixed_precision = bf16 needs a CUDA device (device is " +
                                device.str() + ")");
  if (config.data.folders.empty())
    throw std::invalid_argument(
        "config key 'data.folders' is empty: give at least one folder of training images");
  if (config.train.threads > 0) at::set_num_threads(static_cast<int>(config.train.threads));

  const std::string checkpoint_path = output_dir + "/checkpoint.pt";
  const std::string model_path = output_dir + "/model.pt";
  const std::string metrics_path = output_dir + "/metrics.jsonl";

  // Network and optimiser, possibly from the checkpoint.
  at::manual_seed(config.train.seed);  // parameter initialisation
  RecoveryNet net(network_options(config));
  net.to(device);
  net.train(true);
  Adam adam(net.parameters());
  int64_t first_step = 0;
  if (resume) {
    if (!file_exists(checkpoint_path))
      throw std::runtime_error("--resume: no checkpoint at '" + checkpoint_path + "'");
    auto ck = read_checkpoint(checkpoint_path);
    // Only the step count may change on resume (to train longer).
    auto a = ck.config, b = config;
    a.train.steps = b.train.steps = 0;
    if (to_json(a) != to_json(b))
      throw std::runtime_error("--resume: the config differs from the one '" + checkpoint_path +
                               "' was trained with (only train.steps may change); see " + output_dir +
                               "/config.json");
    net.load_state(ck.model);
    if (ck.adam_step < 0)
      throw std::runtime_error("--resume: '" + checkpoint_path + "' has no optimiser state");
    try {
      adam.load_state(ck.adam_step, ck.exp_avg, ck.exp_avg_sq);
    } catch (const c10::Error& e) {
      throw std::runtime_error(
          "--resume: the optimiser state in '" + checkpoint_path +
          "' does not fit this network: " + std::string(e.what_without_backtrace()));
    }
    first_step = ck.step;
    log::info("resuming from " + checkpoint_path + " at step " + std::to_string(first_step));
  } else if (!config.train.init_from.empty()) {
    init_weights_from(config.train.init_from, config, net);
  }
  log::info("recovery network: " + std::to_string(net.parameter_count()) +
            " trainable parameters (" + std::to_string(config.data.dims) +
            "D, K = " + std::to_string(config.model.recursion) + ")");

  make_dirs(output_dir);
  if (config.train.preview_every > 0) make_dirs(output_dir + "/previews");
  {
    const auto text = to_json(config) + "\n";
    write_bytes_atomically(output_dir + "/config.json",
                           std::vector<char>(text.begin(), text.end()));
  }
  // Metrics of steps after the resumed checkpoint are dropped (they will be redone).
  {
    std::vector<std::string> kept;
    if (resume) {
      std::ifstream in(metrics_path);
      std::string line;
      while (std::getline(in, line)) {
        const auto pos = line.find("\"step\":");
        if (pos != std::string::npos && std::stoll(line.substr(pos + 7)) <= first_step)
          kept.push_back(line);
      }
    }
    std::string text;
    for (const auto& l : kept) text += l + "\n";
    write_bytes_atomically(metrics_path, std::vector<char>(text.begin(), text.end()));
  }

  TrainSummary summary;
  summary.first_step = first_step;
  summary.steps = config.train.steps;
  summary.checkpoint = checkpoint_path;
  if (first_step >= config.train.steps) {
    log::info("nothing to do: the checkpoint is at step " + std::to_string(first_step));
    save_checkpoint(model_path, config, first_step, net, nullptr);
    return summary;
  }

  ImageDataset dataset(config.data);
  if (dataset.size() == 0) throw std::runtime_error("no training samples found in data.folders");
  const auto& size = config.data.size;
  VelocitySampler sampler(config.sampler, size, device);
  std::unique_ptr<BatchPrefetcher> prefetcher;
  if (config.train.prefetch > 0)
    prefetcher =
        std::make_unique<BatchPrefetcher>(dataset, config.train.batch_size, config.train.seed,
                                          first_step, config.augment, config.train.prefetch, 1);

  std::ofstream metrics(metrics_path, std::ios::app);
  detail::ProgressBar bar("train", config.train.steps, first_step, progress);
  double window_loss = 0, window_dist = 0, window_ang = 0, window_smooth = 0, window_fold = 0,
         window_t = 0;
  int64_t window_n = 0;
  auto window_begin = std::chrono::steady_clock::now();
  const bool bf16 = config.train.mixed_precision == "bf16";
  const int64_t batch = config.train.batch_size;
  const int64_t T = config.sampler.timesteps;

  for (int64_t step = first_step; step < config.train.steps; ++step) {
    auto x0 = (prefetcher ? prefetcher->next()
                          : dataset.training_batch(batch, config.train.seed, step, config.augment))
                  .to(device);
    auto t_gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed(config.train.seed, step, 1));
    const auto t = at::randint(1, T + 1, {batch}, t_gen, at::kLong);
    auto field_gen = make_generator(device, stream_seed(config.train.seed, step, 2));
    ForwardSample fwd;
    at::Tensor xt;
    {
      at::NoGradGuard no_grad;
      fwd = sampler.sample(t, field_gen);
      xt = warp(x0, fwd.phi);
    }
    at::Tensor psi_hat;
    if (bf16) {
      at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
      at::autocast::set_autocast_enabled(at::kCUDA, true);
      psi_hat = net.forward(xt, t.to(device));
      at::autocast::set_autocast_enabled(at::kCUDA, false);
      at::autocast::clear_cache();
      psi_hat = psi_hat.to(at::kFloat);
    } else {
      psi_hat = net.forward(xt, t.to(device));
    }
    const auto terms = recovery_loss(fwd.psi, psi_hat, config.loss);
    const double loss = terms.total.item<double>();
    if (!std::isfinite(loss)) {
      bar.finish();
      throw std::runtime_error("the loss became " + std::to_string(loss) + " at step " +
                               std::to_string(step) +
                               "; training stopped. The last good checkpoint is kept" +
                               (file_exists(checkpoint_path) ? " at '" + checkpoint_path + "'"
                                                             : " (none was written yet)") +
                               ". Try a smaller train.lr.");
    }
    adam.zero_grad();
    terms.total.backward();
    const double lr = learning_rate(config.train, step);
    adam.step(lr);

    window_loss += loss;
    window_dist += terms.distance.item<double>();
    window_ang += terms.angle.item<double>();
    window_smooth += terms.smoothness.item<double>();
    window_fold += terms.folding.item<double>();
    window_t += t.to(at::kDouble).mean().item<double>();
    ++window_n;
    const int64_t done = step + 1;
    bar.update(done, "loss " + fixed(window_loss / window_n));

    if (done % config.train.log_every == 0 || done == config.train.steps) {
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - window_begin).count();
      std::ostringstream line;
      line << "{\"step\":" << done << ",\"loss\":" << window_loss / window_n
           << ",\"distance\":" << window_dist / window_n << ",\"angle\":" << window_ang / window_n
           << ",\"smoothness\":" << window_smooth / window_n
           << ",\"folding\":" << window_fold / window_n << ",\"t_mean\":" << window_t / window_n
           << ",\"lr\":" << lr << ",\"seconds_per_step\":" << secs / window_n
           << ",\"images_per_second\":" << window_n * batch / secs << ",\"elapsed_seconds\":"
           << std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count()
           << "}";
      metrics << line.str() << "\n" << std::flush;
      summary.last_loss = window_loss / window_n;
      window_loss = window_dist = window_ang = window_smooth = window_fold = window_t = 0;
      window_n = 0;
      window_begin = std::chrono::steady_clock::now();
    }
    if (config.train.preview_every > 0 &&
        (done % config.train.preview_every == 0 || done == config.train.steps)) {
      char name[64];
      std::snprintf(name, sizeof name, "/previews/step_%06lld.png", static_cast<long long>(done));
      write_training_preview(output_dir + name, x0, xt, fwd.phi, psi_hat.detach());
    }
    if (done % config.train.checkpoint_every == 0 || done == config.train.steps) {
      save_checkpoint(checkpoint_path, config, done, net, &adam);
      save_checkpoint(model_path, config, done, net, nullptr);
    }
  }
  bar.finish();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  log::info("trained to step " + std::to_string(config.train.steps) + " in " +
            detail::format_duration(summary.seconds) + "; model: " + model_path);
  return summary;
}

TrainedModel load_model(const std::string& name_or_path, const torch::Device& device) {
  const auto path = resolve_model_path(name_or_path);
  auto ck = read_checkpoint(path);
  TrainedModel m{RecoveryNet(network_options(ck.config)), ck.config, ck.step};
  try {
    m.net.load_state(ck.model);
  } catch (const c10::Error& e) {
    throw std::runtime_error("'" + path + "' does not match its own network config: " +
                             std::string(e.what_without_backtrace()));
  }
  m.net.to(device);
  m.net.train(false);
  return m;
}

std::vector<RecoveryCheck> check_recovery(RecoveryNet& net, const VelocitySampler& sampler,
                                          const at::Tensor& images,
                                          const std::vector<int64_t>& levels, int64_t repeats,
                                          uint64_t seed, int64_t batch) {
  TORCH_CHECK(
      images.dim() == 2 + static_cast<int64_t>(sampler.image_size().size()) && images.size(1) == 1,
      "check_recovery: images must be [N, 1, ...S] matching the sampler");
  TORCH_CHECK(repeats >= 1 && batch >= 1, "check_recovery: repeats and batch must be >= 1");
  at::NoGradGuard no_grad;
  const bool was_training = net.is_training();
  net.train(false);
  const auto device = net.parameters().front().device();
  std::vector<RecoveryCheck> out;
  for (const auto level : levels) {
    RecoveryCheck c;
    c.t = level;
    double no_step = 0, one_step = 0, cosine = 0;
    int64_t chunk_id = 0;
    for (int64_t r = 0; r < repeats; ++r) {
      for (int64_t start = 0; start < images.size(0); start += batch, ++chunk_id) {
        const int64_t n = std::min(batch, images.size(0) - start);
        const auto x0 = images.narrow(0, start, n).to(device);
        auto gen = make_generator(device, stream_seed(seed, level * 1000003 + chunk_id, 3));
        const auto t = at::full({n}, level, at::kLong);
        const auto fwd = sampler.sample(t, gen);
        const auto xt = warp(x0, fwd.phi);
        const auto psi_hat = net.forward(xt, t.to(device));
        const auto residual = compose(fwd.psi, psi_hat);  // psi + psi_hat(x + psi(x))
        const auto back = residual - fwd.psi;               // psi_hat(x + psi(x))
        const auto psi_norm = fwd.psi.norm(2, 1);
        no_step += psi_norm.mean().item<double>() * n;
        one_step += residual.norm(2, 1).mean().item<double>() * n;
        cosine +=
            (-(fwd.psi * back).sum(1) / (psi_norm * back.norm(2, 1) + 1e-6)).mean().item<double>() *
            n;
        c.samples += n;
      }
    }
    c.no_step_error = no_step / c.samples;
    c.one_step_error = one_step / c.samples;
    c.ratio = c.one_step_error / std::max(c.no_step_error, 1e-12);
    c.cosine = cosine / c.samples;
    out.push_back(c);
  }
  net.train(was_training);
  return out;
}

}  // namespace drdm
