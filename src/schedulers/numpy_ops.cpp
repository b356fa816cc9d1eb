// numpy rounds after every operation (one ufunc each); a compiler that fuses a * b + c into an FMA would
// round once and move a timestep by an ulp. Contraction is off for this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "diffuse/schedulers/numpy_ops.hpp"

#include <cmath>
#include <string>

#include "diffuse/error.hpp"

namespace diffuse {

std::vector<double> numpy_linspace(double start, double stop, int64_t num) {
  if (num < 0) throw Error("linspace: the number of samples must be non-negative, got " + std::to_string(num));
  std::vector<double> out(static_cast<size_t>(num));
  if (num == 0) return out;
  if (num == 1) return {start};
  const double delta = stop - start;
  const double step = delta / static_cast<double>(num - 1);
  for (int64_t i = 0; i < num; ++i) {
    // numpy divides first when the step underflows to 0, to keep the spacing.
    const double y =
        step == 0.0 ? static_cast<double>(i) / static_cast<double>(num - 1) * delta : static_cast<double>(i) * step;
    out[static_cast<size_t>(i)] = y + start;
  }
  out.back() = stop;
  return out;
}

std::vector<double> numpy_arange(double start, double stop, double step) {
  if (step == 0.0 || !std::isfinite(step)) throw Error("arange: the step must be finite and non-zero");
  const double count = std::ceil((stop - start) / step);
  if (!(count > 0)) return {};
  if (count > 1e9) throw Error("arange: " + std::to_string(count) + " values are too many");
  const auto length = static_cast<size_t>(count);
  std::vector<double> out(length);
  out[0] = start;
  if (length > 1) out[1] = start + step;
  const double delta = out.size() > 1 ? out[1] - start : step;
  for (size_t i = 2; i < length; ++i) out[i] = start + static_cast<double>(i) * delta;
  return out;
}

std::vector<double> numpy_interp(const std::vector<double>& x, const std::vector<double>& xp,
                                 const std::vector<double>& fp) {
  if (xp.empty() || xp.size() != fp.size())
    throw Error("interp: xp and fp must be non-empty and of one length, got " + std::to_string(xp.size()) + " and " +
                std::to_string(fp.size()));
  std::vector<double> out;
  out.reserve(x.size());
  const size_t n = xp.size();
  for (double v : x) {
    if (std::isnan(v)) {
      out.push_back(v);
    } else if (v >= xp[n - 1]) {
      out.push_back(fp[n - 1]);  // numpy: the right value at and beyond the last point
    } else if (v < xp[0]) {
      out.push_back(fp[0]);
    } else {
      // The last j with xp[j] <= v (numpy's binary search); xp[n-1] > v, so j + 1 < n.
      size_t lo = 0, hi = n - 1;
      while (hi - lo > 1) {
        const size_t mid = lo + (hi - lo) / 2;
        if (xp[mid] <= v) lo = mid; else hi = mid;
      }
      if (xp[lo] == v) {
        out.push_back(fp[lo]);
      } else {
        const double slope = (fp[lo + 1] - fp[lo]) / (xp[lo + 1] - xp[lo]);
        double y = slope * (v - xp[lo]) + fp[lo];
        // numpy: on a NaN from one side (infinite slopes), try the other.
        if (std::isnan(y)) {
          y = slope * (v - xp[lo + 1]) + fp[lo + 1];
          if (std::isnan(y) && fp[lo] == fp[lo + 1]) y = fp[lo];
        }
        out.push_back(y);
      }
    }
  }
  return out;
}

double numpy_round(double x) { return std::nearbyint(x); }

}  // namespace diffuse
