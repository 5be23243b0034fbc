#include "drdm/core/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace drdm {

double mean_of(const std::vector<double>& v) {
  double s = 0;
  int n = 0;
  for (double x : v)
    if (std::isfinite(x)) s += x, ++n;
  return n ? s / n : std::numeric_limits<double>::quiet_NaN();
}

double std_of(const std::vector<double>& v) {
  const double m = mean_of(v);
  double s = 0;
  int n = 0;
  for (double x : v)
    if (std::isfinite(x)) s += (x - m) * (x - m), ++n;
  return n > 1 ? std::sqrt(s / (n - 1)) : (n == 1 ? 0.0 : m);
}

namespace {

/// Average ranks (1-based) of |d|, and the tie correction sum (t^3 - t).
std::vector<double> abs_ranks(const std::vector<double>& d, double& tie_term) {
  std::vector<size_t> order(d.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return std::fabs(d[a]) < std::fabs(d[b]); });
  std::vector<double> rank(d.size());
  tie_term = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && std::fabs(d[order[j + 1]]) == std::fabs(d[order[i]])) ++j;
    const double r = (static_cast<double>(i + j) + 2.0) / 2.0;
    for (size_t k = i; k <= j; ++k) rank[order[k]] = r;
    const double t = static_cast<double>(j - i + 1);
    tie_term += t * t * t - t;
    i = j + 1;
  }
  return rank;
}

/// P(W+ <= w) and P(W+ >= w) under the null, by counting the 2^n sign patterns.
double exact_two_sided(int n, double w_plus) {
  const int max = n * (n + 1) / 2;
  std::vector<double> count(max + 1, 0.0);
  count[0] = 1;
  for (int k = 1; k <= n; ++k)
    for (int s = max; s >= k; --s) count[s] += count[s - k];
  const double total = std::pow(2.0, n);
  double low = 0, high = 0;
  for (int s = 0; s <= max; ++s) {
    if (s <= w_plus + 1e-9) low += count[s];
    if (s >= w_plus - 1e-9) high += count[s];
  }
  return std::min(1.0, 2.0 * std::min(low, high) / total);
}

}  // namespace

double wilcoxon_signed_rank(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() != y.size())
    throw std::invalid_argument("wilcoxon_signed_rank: x and y differ in length");
  std::vector<double> d;
  for (size_t i = 0; i < x.size(); ++i)
    if (std::isfinite(x[i]) && std::isfinite(y[i]) && x[i] != y[i]) d.push_back(x[i] - y[i]);
  const int n = static_cast<int>(d.size());
  if (n == 0) return 1.0;
  double tie_term = 0;
  const auto rank = abs_ranks(d, tie_term);
  double w_plus = 0;
  for (int i = 0; i < n; ++i)
    if (d[i] > 0) w_plus += rank[i];
  if (n <= 25 && tie_term == 0) return exact_two_sided(n, w_plus);
  const double mean = n * (n + 1) / 4.0;
  const double var = n * (n + 1) * (2.0 * n + 1) / 24.0 - tie_term / 48.0;
  if (var <= 0) return 1.0;
  const double z = (std::fabs(w_plus - mean) - 0.5) / std::sqrt(var);
  return std::min(1.0, std::erfc(std::max(0.0, z) / std::sqrt(2.0)));
}

}  // namespace drdm
