#pragma once
// The numpy routines that diffusers builds its schedules with, reproduced operation for operation in
// float64, so that timesteps and sigmas round exactly where numpy's do (numpy 2: a Python float stays
// weak under NEP 50 promotion, a numpy float64 scalar does not).

#include <cstdint>
#include <vector>

namespace diffuse {

// numpy.linspace(start, stop, num): start + i * step, the last value exactly `stop`.
std::vector<double> numpy_linspace(double start, double stop, int64_t num);

// numpy.arange(start, stop, step) in float64: ceil((stop - start) / step) values; the second value is
// start + step and the rest start + i * delta with delta = (start + step) - start, as numpy fills them.
std::vector<double> numpy_arange(double start, double stop, double step);

// numpy.interp(x, xp, fp) for increasing xp: slope * (x - xp[j]) + fp[j] between points, fp[j] on a
// point, the end values outside.
std::vector<double> numpy_interp(const std::vector<double>& x, const std::vector<double>& xp,
                                 const std::vector<double>& fp);

// numpy.round: halves to even (2.5 -> 2, 3.5 -> 4).
double numpy_round(double x);

}  // namespace diffuse
