#include "norm/placement.h"

#include <cmath>

#include "autograd/ops.h"
#include "framework/tensor_ops.h"

namespace normlab {

std::string to_string(Placement p) {
  switch (p) {
    case Placement::none: return "none";
    case Placement::pre: return "pre";
    case Placement::post: return "post";
    case Placement::peri: return "peri";
    case Placement::deepnorm: return "deepnorm";
    case Placement::hybrid: return "hybrid";
    case Placement::hybrid_star: return "hybrid_star";
  }
  NL_FAIL("to_string: invalid Placement value ", int(p));
}

Placement parse_placement(std::string_view name) {
  std::string valid;
  for (Placement p : all_placements) {
    if (name == to_string(p)) return p;
    valid += (valid.empty() ? "" : ", ") + to_string(p);
  }
  NL_FAIL("unknown placement '", name, "' (valid: ", valid, ")");
}

std::string to_string(SublayerRole r) {
  switch (r) {
    case SublayerRole::attention: return "attention";
    case SublayerRole::ffn: return "ffn";
  }
  NL_FAIL("to_string: invalid SublayerRole value ", int(r));
}

std::string to_string(ResidualForm f) {
  switch (f) {
    case ResidualForm::plain: return "x + f(x)";
    case ResidualForm::pre: return "x + f(N(x))";
    case ResidualForm::post: return "N(x + f(x))";
    case ResidualForm::peri: return "x + N_out(f(N_in(x)))";
    case ResidualForm::deepnorm: return "N(alpha * x + f(x))";
    case ResidualForm::norm_first: return "z + f(z), z = N(x)";
  }
  NL_FAIL("to_string: invalid ResidualForm value ", int(f));
}

static void check_block(int64_t block, const char* who) {
  NL_CHECK(block >= 0, who, ": the block index must be >= 0, got ", block);
}

ResidualForm residual_form(Placement p, SublayerRole role, int64_t block) {
  check_block(block, "residual_form");
  switch (p) {
    case Placement::none: return ResidualForm::plain;
    case Placement::pre: return ResidualForm::pre;
    case Placement::post: return ResidualForm::post;
    case Placement::peri: return ResidualForm::peri;
    case Placement::deepnorm: return ResidualForm::deepnorm;
    case Placement::hybrid_star:
      if (block == 0) return ResidualForm::pre;
      [[fallthrough]];
    case Placement::hybrid: return role == SublayerRole::attention ? ResidualForm::plain : ResidualForm::norm_first;
  }
  NL_FAIL("residual_form: invalid Placement value ", int(p));
}

bool normalizes_qkv(Placement p, int64_t block) {
  check_block(block, "normalizes_qkv");
  return p == Placement::hybrid || (p == Placement::hybrid_star && block > 0);
}

bool uses_final_norm(Placement p) {
  return p == Placement::pre || p == Placement::peri || p == Placement::hybrid || p == Placement::hybrid_star;
}

Residual::Residual(Placement placement, SublayerRole role, int64_t block, const NormFactory& make_norm, double alpha)
    : placement_(placement), role_(role), block_(block), form_(residual_form(placement, role, block)), alpha_(alpha) {
  NL_CHECK(std::isfinite(alpha) && alpha > 0, "Residual: alpha must be a finite number > 0, got ", alpha);
  NL_CHECK(alpha == 1.0 || placement == Placement::deepnorm, "Residual: alpha=", alpha, " given for placement '",
           to_string(placement), "'; only deepnorm scales the skip (leave alpha at 1)");
  auto build = [&](const char* name) {
    NL_CHECK(make_norm != nullptr, "Residual: placement '", to_string(placement), "' needs a norm factory");
    std::shared_ptr<NormLayer> n = make_norm();
    NL_CHECK(n != nullptr, "Residual: the norm factory returned null for '", name, "'");
    return register_module(name, std::move(n));
  };
  switch (form_) {
    case ResidualForm::plain: break;
    case ResidualForm::peri:
      norm_in = build("norm_in");
      norm_out = build("norm_out");
      break;
    default: norm = build("norm");
  }
}

Variable ResidualStream::sum() const { return r.defined() ? x + r : x; }

std::pair<Variable, Variable> ResidualStream::sum_and_norm(NormLayer& norm, bool keep_sum) const {
  if (!r.defined()) return {x, norm.forward(x)};
  return norm.forward_add(x, r, keep_sum);
}

Tensor ResidualStream::data() const { return r.defined() ? add(x.data(), r.data()) : x.data(); }

Variable Residual::forward(const Variable& x, const SublayerFn& f) const {
  return forward(ResidualStream{x, {}}, f).sum();
}

ResidualStream Residual::forward(const ResidualStream& in, const SublayerFn& f) const {
  NL_CHECK(in.x.defined(), "Residual: the input is undefined");
  auto branch = [&](const Variable& h) {
    Variable y = f(h);
    NL_CHECK(y.defined() && y.shape() == h.shape(), "Residual: the ", to_string(role_), " sublayer of block ",
             block_, " returned shape ", y.defined() ? to_string(y.shape()) : "(undefined)", " for input shape ",
             to_string(h.shape()), "; a residual needs the same shape");
    return y;
  };
  // Each case computes its formula (see ResidualForm) with the add of `in` done first or
  // together with the first norm, and the last add left to the returned stream.
  switch (form_) {
    case ResidualForm::plain: {
      const Variable x = in.sum();
      return {x, branch(x)};
    }
    case ResidualForm::pre: {
      const auto [x, a] = in.sum_and_norm(*norm);
      return {x, branch(a)};
    }
    case ResidualForm::post: {
      const Variable x = in.sum();
      return {norm->forward_add(x, branch(x), false).second, {}};
    }
    case ResidualForm::peri: {
      const auto [x, a] = in.sum_and_norm(*norm_in);
      return {x, norm_out->forward(branch(a))};
    }
    case ResidualForm::deepnorm: {
      const Variable x = in.sum();
      return {norm->forward_add(alpha_ * x, branch(x), false).second, {}};
    }
    case ResidualForm::norm_first: {
      const Variable z = in.sum_and_norm(*norm, false).second;
      return {z, branch(z)};
    }
  }
  NL_FAIL("Residual: invalid form ", int(form_));
}

}  // namespace normlab
