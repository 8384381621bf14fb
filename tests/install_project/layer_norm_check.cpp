// A LayerNorm forward and backward through an installed normlab.
#include <cmath>
#include <cstdio>
#include <vector>

#include "autograd/ops.h"
#include "norm/layer_norm/layer_norm.h"
using namespace normlab;

int main() {
  LayerNorm norm(4);  // weight 1, bias 0
  Variable x(from_vector(std::vector<float>{1, 2, 3, 4}, {1, 4}), /*requires_grad=*/true);
  Variable y = norm.forward(x);
  sum(y * y).backward();  // y is normalized, so sum(y^2) is N (up to eps) and dx is ~0
  std::printf("y =");
  for (int64_t j = 0; j < 4; ++j) std::printf(" %.4f", y.data().at({0, j}));
  std::printf("\nsum(y^2) = %.4f, |dx| < 1e-3: %s\n", sum(y * y).item(),
              std::abs(x.grad().at({0, 0})) < 1e-3 && std::abs(x.grad().at({0, 3})) < 1e-3 ? "yes" : "no");
}
