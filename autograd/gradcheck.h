// gradcheck: compares the analytic gradients of fn at `inputs` with central finite
// differences in f64, and reports the worst element. Usable on any user-written layer.
//
// The output of fn is reduced to a scalar L = sum(out * r) with a fixed random r, so
// non-scalar outputs are checked in a random direction. For each input that requires
// grad: every element is perturbed (x_j +- eps, x_j +- 2 eps) when the input has at most
// `max_full_elements` elements; larger inputs are checked with `probes` random
// directions v instead: the derivative of L(x + t v) at t = 0 against <dL/dx, v>.
// The default 4-point stencil has O(eps^4) truncation error: with eps = 1e-4 the op table
// of the tests agrees to ~1e-8 relative; keep eps well below the distance to any kink.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/variable.h"

namespace normlab {

struct GradcheckOptions {
  double eps = 1e-4;
  int stencil = 4;  // 2: (L(x+h) - L(x-h)) / 2h; 4: (8(L(x+h) - L(x-h)) - (L(x+2h) - L(x-2h))) / 12h
  double atol = 1e-8;   // element passes when |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-6;
  double rel_floor = 1e-3;  // relative error = |a - n| / max(|a|, |n|, rel_floor)
  int64_t max_full_elements = 4096;
  int probes = 16;
  uint64_t seed = 1234;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  double max_rel_error = 0;
  // The worst element (by relative error): input number, flat index (or probe number),
  // and both derivatives.
  int input = -1;
  int64_t index = -1;
  bool probe = false;
  double analytic = 0;
  double numeric = 0;
  int64_t checked = 0;  // derivatives compared
  std::string report() const;
};

using GradcheckFn = std::function<Variable(const std::vector<Variable>&)>;

GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Variable>& inputs, const GradcheckOptions& options = {});
GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Variable>& inputs, double eps, double atol, double rtol);

}  // namespace normlab
