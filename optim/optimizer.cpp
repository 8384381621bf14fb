// The optimizer base (groups, validation, step loop, save/load), SGD, Adam/AdamW and the
// parameter-group split. The update formulas are in optim.h.
#include <cmath>
#include <set>
#include <string>
#include <unordered_set>

#include "framework/enum_names.h"
#include "optim/flat_spans.h"
#include "optim/optim.h"

namespace normlab {

namespace {

bool is_unit_interval(double x) { return x >= 0.0 && x < 1.0; }  // [0, 1); false for NaN

// "<group>/<name>" (write_tensor and the attribute functions drop empty components).
std::string child_path(const std::string& group, const std::string& name) { return group + "/" + name; }

int64_t num_params_of(const std::vector<ParamGroup>& groups) {
  int64_t n = 0;
  for (const ParamGroup& g : groups) n += int64_t(g.params.size());
  return n;
}

}  // namespace

// ---- Parameter groups and mode names ----

std::vector<ParamGroup> param_groups(const NamedParameters& params, double weight_decay,
                                     const std::function<bool(const std::string&, const Variable&)>& decay) {
  NL_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, "param_groups: weight_decay must be finite and >= 0, got ",
           weight_decay);
  ParamGroup with{{}, weight_decay}, without{{}, 0.0};
  for (const auto& [name, p] : params) {
    NL_CHECK(p.defined(), "param_groups: parameter '", name, "' is undefined");
    const bool d = decay ? decay(name, p) : p.dim() >= 2;
    (d ? with : without).params.emplace_back(name, p);
  }
  std::vector<ParamGroup> groups;
  if (!with.params.empty()) groups.push_back(std::move(with));
  if (!without.params.empty()) groups.push_back(std::move(without));
  return groups;
}

constexpr EnumNames<WeightDecayMode, 3> kWeightDecayModeNames{{{WeightDecayMode::l2, "l2"},
                                                               {WeightDecayMode::decoupled, "decoupled"},
                                                               {WeightDecayMode::independent, "independent"}}};

const char* to_string(WeightDecayMode m) { return enum_name(kWeightDecayModeNames, m); }

WeightDecayMode parse_weight_decay_mode(const std::string& name) {
  return parse_enum(kWeightDecayModeNames, name, "weight decay mode");
}

// ---- Optimizer ----

Optimizer::Optimizer(std::vector<ParamGroup> groups, double lr, const char* who)
    : groups_(std::move(groups)), lr_(lr), peak_lr_(lr) {
  NL_CHECK(!groups_.empty(), who, ": the list of parameter groups is empty");
  NL_CHECK(std::isfinite(lr) && lr >= 0, who, ": lr must be finite and >= 0, got ", lr);
  std::set<std::string> names;
  std::unordered_set<const VariableImpl*> seen;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const double wd = groups_[g].weight_decay;
    NL_CHECK(std::isfinite(wd) && wd >= 0, who, ": weight_decay of group ", g, " must be finite and >= 0, got ", wd);
    for (const auto& [name, p] : groups_[g].params) {
      NL_CHECK(!name.empty(), who, ": a parameter of group ", g, " has an empty name");
      NL_CHECK(name.find('/') == std::string::npos, who, ": parameter name '", name,
               "' contains '/' (names are HDF5 path components)");
      NL_CHECK(p.defined(), who, ": parameter '", name, "' is undefined");
      NL_CHECK(p.dtype() == DType::f32 || p.dtype() == DType::f64, who, ": parameter '", name, "' has dtype ",
               dtype_name(p.dtype()), " (expected f32 or f64)");
      NL_CHECK(p.data().device() == Device::cpu(), who, ": parameter '", name, "' is on ", p.data().device(),
               " (only cpu is supported)");
      NL_CHECK(names.insert(name).second, who, ": parameter name '", name, "' appears twice");
      NL_CHECK(seen.insert(p.impl()).second, who, ": parameter '", name,
               "' is the same Variable as an earlier parameter");
    }
  }
  state_.resize(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) state_[g].resize(groups_[g].params.size());
}

void Optimizer::set_lr(double lr) {
  NL_CHECK(std::isfinite(lr) && lr >= 0, name(), ": lr must be finite and >= 0, got ", lr);
  lr_ = lr;
}

void Optimizer::step() {
  // Check every gradient before changing anything, so a bad one leaves the optimizer as it was.
  for (const ParamGroup& group : groups_) {
    for (const auto& [pname, p] : group.params) {
      const Tensor& g = p.grad();
      if (!g.defined()) continue;
      NL_CHECK(p.data().is_contiguous(), name(), ": parameter '", pname, "' is not contiguous");
      NL_CHECK(g.shape() == p.shape(), name(), ": gradient of '", pname, "' has shape ", to_string(g.shape()),
               " but the parameter has shape ", to_string(p.shape()));
      NL_CHECK(p.dtype() == DType::f32 || p.dtype() == DType::f64, name(), ": parameter '", pname, "' has dtype ",
               dtype_name(p.dtype()), " (expected f32 or f64)");
      NL_CHECK(g.dtype() == p.dtype(), name(), ": gradient of '", pname, "' has dtype ", dtype_name(g.dtype()),
               " but the parameter has dtype ", dtype_name(p.dtype()));
      NL_CHECK(g.device() == p.data().device(), name(), ": gradient of '", pname, "' is on ", g.device(),
               " but the parameter is on ", p.data().device());
      check_cpu(p.data(), name());  // the updates are CPU kernels (a Module may have moved since)
    }
  }
  const int64_t t = t_ + 1;
  const size_t n_state = state_names().size();
  FlatSpans params;
  std::vector<Tensor> copies;  // contiguous copies of strided gradients, alive through the update
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
      const Variable& p = groups_[gi].params[i].second;
      Tensor g = p.grad();
      if (!g.defined()) continue;
      if (!g.is_contiguous()) g = copies.emplace_back(g.contiguous());
      std::vector<Tensor>& state = state_[gi][i];
      TensorSpan s{.ptr = {p.data().raw_data(), g.raw_data()}, .numel = p.numel(), .dtype = p.dtype(),
                   .tag = int64_t(gi), .first = state.empty() && n_state > 0};
      if (s.first)
        for (size_t b = 0; b < n_state; ++b) state.push_back(zeros_like(p.data()));
      for (size_t b = 0; b < state.size(); ++b) s.ptr[2 + b] = state[b].raw_data();
      params.add(s);
    }
  }
  update(params, t);
  t_ = t;
}

void Optimizer::zero_grad() {
  for (ParamGroup& group : groups_)
    for (auto& [pname, p] : group.params) p.zero_grad();
}

void Optimizer::save(H5File& file, const std::string& group_path) const {
  NL_CHECK(file.is_open() && file.mode() != H5File::Mode::read, name(), ".save: file '", file.path(),
           "' is not open for writing");
  file.remove(group_path);  // replaces an earlier state (at the root, overwrites it)
  write_attribute(file, group_path, "name", name());
  write_attribute(file, group_path, "step", t_);
  write_attribute(file, group_path, "lr", lr_);
  write_attribute(file, group_path, "peak_lr", peak_lr_);
  write_attribute(file, group_path, "num_params", num_params_of(groups_));
  const std::vector<std::string> buffers = state_names();
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      const auto& [pname, p] = groups_[g].params[i];
      const std::string ppath = child_path(group_path, pname);
      write_attribute(file, ppath, "shape", to_string(p.shape()));
      write_attribute(file, ppath, "dtype", dtype_name(p.dtype()));
      const std::vector<Tensor>& state = state_[g][i];
      if (state.empty()) continue;
      NL_CHECK(state.size() == buffers.size(), name(), ".save: parameter '", pname, "' has ", state.size(),
               " state buffers, expected ", buffers.size());
      for (size_t b = 0; b < buffers.size(); ++b) write_tensor(file, child_path(ppath, buffers[b]), state[b]);
    }
  }
}

void Optimizer::load(const H5File& file, const std::string& group_path) {
  const std::string where = "'" + group_path + "' in " + file.path();
  NL_CHECK(file.exists(group_path), name(), ".load: no optimizer state at ", where);
  for (const char* attr : {"name", "step", "lr", "peak_lr", "num_params"})
    NL_CHECK(has_attribute(file, group_path, attr), name(), ".load: attribute '", attr, "' is missing at ", where,
             " (not an optimizer state)");
  const std::string kind = read_attribute_string(file, group_path, "name");
  NL_CHECK(kind == name(), name(), ".load: the state at ", where, " is for optimizer '", kind, "', not '", name(),
           "'");
  const int64_t n = read_attribute_int(file, group_path, "num_params");
  NL_CHECK(n == num_params_of(groups_), name(), ".load: the state at ", where, " has ", n,
           " parameters but the optimizer has ", num_params_of(groups_));
  const int64_t step = read_attribute_int(file, group_path, "step");
  NL_CHECK(step >= 0, name(), ".load: step must be >= 0, got ", step, " at ", where);
  const double lr = read_attribute_double(file, group_path, "lr"), peak = read_attribute_double(file, group_path, "peak_lr");
  NL_CHECK(std::isfinite(lr) && lr >= 0, name(), ".load: lr must be finite and >= 0, got ", lr, " at ", where);
  NL_CHECK(std::isfinite(peak) && peak >= 0, name(), ".load: peak_lr must be finite and >= 0, got ", peak, " at ",
           where);

  const std::vector<std::string> buffers = state_names();
  std::vector<std::vector<std::vector<Tensor>>> state(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    state[g].resize(groups_[g].params.size());
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      const auto& [pname, p] = groups_[g].params[i];
      const std::string ppath = child_path(group_path, pname);
      NL_CHECK(file.exists(ppath) && has_attribute(file, ppath, "shape"), name(), ".load: parameter '", pname,
               "' is missing from the state at ", where);
      const std::string shape = read_attribute_string(file, ppath, "shape");
      NL_CHECK(shape == to_string(p.shape()), name(), ".load: parameter '", pname, "' has shape ", shape,
               " in the state at ", where, " but ", to_string(p.shape()), " in the optimizer");
      const std::string dtype = read_attribute_string(file, ppath, "dtype");
      NL_CHECK(dtype == dtype_name(p.dtype()), name(), ".load: parameter '", pname, "' has dtype ", dtype,
               " in the state at ", where, " but ", dtype_name(p.dtype()), " in the optimizer");
      size_t present = 0;
      for (const std::string& b : buffers) present += file.exists(child_path(ppath, b)) ? 1 : 0;
      if (present == 0) continue;  // not yet updated when saved
      NL_CHECK(present == buffers.size(), name(), ".load: parameter '", pname, "' has ", present, " of the ",
               buffers.size(), " state buffers in the state at ", where);
      for (const std::string& b : buffers) {
        Tensor t = read_tensor(file, child_path(ppath, b));
        NL_CHECK(t.shape() == p.shape() && t.dtype() == p.dtype(), name(), ".load: buffer '", b, "' of parameter '",
                 pname, "' is ", dtype_name(t.dtype()), " ", to_string(t.shape()), " at ", where, " (expected ",
                 dtype_name(p.dtype()), " ", to_string(p.shape()), ")");
        state[g][i].push_back(std::move(t));
      }
    }
  }
  state_ = std::move(state);
  t_ = step;
  lr_ = lr;
  peak_lr_ = peak;
}

// ---- SGD ----

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions opt) : Optimizer(std::move(groups), opt.lr, "SGD"), options(opt) {
  NL_CHECK(is_unit_interval(opt.momentum), "SGD: momentum must be in [0, 1), got ", opt.momentum);
  NL_CHECK(is_unit_interval(opt.dampening), "SGD: dampening must be in [0, 1), got ", opt.dampening);
  NL_CHECK(!opt.nesterov || opt.momentum > 0, "SGD: nesterov needs momentum > 0, got momentum ", opt.momentum);
  NL_CHECK(!opt.nesterov || opt.dampening == 0, "SGD: nesterov needs dampening 0, got dampening ", opt.dampening);
}

std::vector<std::string> SGD::state_names() const {
  if (options.momentum == 0) return {};
  return {"momentum"};
}

void SGD::update(const FlatSpans& params, int64_t /*t*/) {
  const double lr = this->lr(), mu = options.momentum, damp = options.dampening;
  const bool nesterov = options.nesterov;
  params.for_each([&](const TensorSpan& s, int64_t i0, int64_t i1) {
    const double wd = groups()[size_t(s.tag)].weight_decay;
    const bool first = s.first;
    NL_DISPATCH_FLOATING(s.dtype, "SGD", [&] {
      scalar_t* x = static_cast<scalar_t*>(s.ptr[0]);
      const scalar_t* gp = static_cast<const scalar_t*>(s.ptr[1]);
      scalar_t* buf = mu != 0 ? static_cast<scalar_t*>(s.ptr[2]) : nullptr;
      // Scalar math: g' = g + wd x;  b = mu b + (1 - damp) g' (b = g' first);  d = nesterov ? g' + mu b : b;
      //              x -= lr d
      for (int64_t i = i0; i < i1; ++i) {
        const double xi = double(x[i]);
        const double gi = wd != 0 ? double(gp[i]) + wd * xi : double(gp[i]);
        double d = gi;
        if (buf) {
          const double b = first ? gi : mu * double(buf[i]) + (1 - damp) * gi;
          buf[i] = scalar_t(b);
          d = nesterov ? gi + mu * b : b;
        }
        x[i] = scalar_t(xi - lr * d);
      }
    });
  });
}

// ---- Adam / AdamW ----

Adam::Adam(std::vector<ParamGroup> groups, AdamOptions opt)
    : Optimizer(std::move(groups), opt.lr, "Adam"), options(opt) {
  NL_CHECK(is_unit_interval(opt.beta1), "Adam: beta1 must be in [0, 1), got ", opt.beta1);
  NL_CHECK(is_unit_interval(opt.beta2), "Adam: beta2 must be in [0, 1), got ", opt.beta2);
  NL_CHECK(std::isfinite(opt.eps) && opt.eps > 0, "Adam: eps must be finite and > 0, got ", opt.eps);
  const auto m = opt.weight_decay_mode;
  NL_CHECK(m == WeightDecayMode::l2 || m == WeightDecayMode::decoupled || m == WeightDecayMode::independent,
           "Adam: unknown weight_decay_mode ", int(m));
  NL_CHECK(m != WeightDecayMode::independent || opt.lr > 0,
           "Adam: independent weight decay divides by the peak lr, which must be > 0, got lr ", opt.lr);
}

const char* Adam::name() const { return options.weight_decay_mode == WeightDecayMode::l2 ? "adam" : "adamw"; }

std::vector<std::string> Adam::state_names() const { return {"exp_avg", "exp_avg_sq"}; }

void Adam::update(const FlatSpans& params, int64_t t) {
  const double lr = this->lr(), b1 = options.beta1, b2 = options.beta2, eps = options.eps;
  const double bc1 = 1 - std::pow(b1, double(t)), bc2 = 1 - std::pow(b2, double(t));
  params.for_each([&](const TensorSpan& s, int64_t i0, int64_t i1) {
    const double weight_decay = groups()[size_t(s.tag)].weight_decay;
    double l2 = 0, shrink = 1;  // g' = g + l2 x;  x *= shrink before the Adam step
    switch (options.weight_decay_mode) {
      case WeightDecayMode::l2: l2 = weight_decay; break;
      case WeightDecayMode::decoupled: shrink = 1 - lr * weight_decay; break;
      case WeightDecayMode::independent: shrink = 1 - lr / peak_lr() * weight_decay; break;
    }
    NL_DISPATCH_FLOATING(s.dtype, name(), [&] {
      scalar_t* x = static_cast<scalar_t*>(s.ptr[0]);
      const scalar_t* gp = static_cast<const scalar_t*>(s.ptr[1]);
      scalar_t* m = static_cast<scalar_t*>(s.ptr[2]);
      scalar_t* v = static_cast<scalar_t*>(s.ptr[3]);
      // Scalar math: g' = g + l2 x;  x *= shrink;  m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2;
      //              x -= lr (m / bc1) / (sqrt(v / bc2) + eps)
      // The loop-invariant branches vectorize as selects. They stay in the loop: the compiler fuses
      // multiplies into adds (FMA), and which ones it fuses, hence the last bits, follows this form.
      for (int64_t i = i0; i < i1; ++i) {
        double xi = double(x[i]);
        const double gi = l2 != 0 ? double(gp[i]) + l2 * xi : double(gp[i]);
        if (shrink != 1) xi *= shrink;
        const double mi = b1 * double(m[i]) + (1 - b1) * gi;
        const double vi = b2 * double(v[i]) + (1 - b2) * gi * gi;
        m[i] = scalar_t(mi);
        v[i] = scalar_t(vi);
        x[i] = scalar_t(xi - lr * (mi / bc1) / (std::sqrt(vi / bc2) + eps));
      }
    });
  });
}

std::unique_ptr<Adam> make_adamw(std::vector<ParamGroup> groups, AdamOptions options) {
  NL_CHECK(options.weight_decay_mode != WeightDecayMode::l2,
           "make_adamw: weight_decay_mode must be decoupled or independent, got l2 (use Adam for l2)");
  return std::make_unique<Adam>(std::move(groups), options);
}

}  // namespace normlab
