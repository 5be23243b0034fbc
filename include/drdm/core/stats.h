/// @file Small statistics for experiment reports: mean, standard deviation,
/// and the paired Wilcoxon signed-rank test.
#pragma once

#include <vector>

namespace drdm {

/// Mean and sample standard deviation (n - 1) of the finite values; NaN when none.
double mean_of(const std::vector<double>& values);
double std_of(const std::vector<double>& values);

/// Two-sided p-value of the paired Wilcoxon signed-rank test of x against y
/// (x.size() == y.size()). Pairs where either value is NaN are dropped; zero
/// differences are dropped (Wilcoxon's rule); ties get average ranks. With at
/// most 25 non-zero differences and no ties the p-value is exact (the null
/// distribution of W+ enumerated); otherwise the normal approximation with
/// tie correction and continuity correction. 1 when nothing is left.
double wilcoxon_signed_rank(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace drdm
