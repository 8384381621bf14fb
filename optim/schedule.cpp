// Learning-rate schedules: linear warmup, then constant, linear or cosine decay to min_lr, or
// inverse square root. The formulas are in optim.h.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "framework/enum_names.h"
#include "optim/optim.h"

namespace normlab {

constexpr EnumNames<ScheduleKind, 4> kScheduleNames{{{ScheduleKind::constant, "constant"},
                                                     {ScheduleKind::linear, "linear"},
                                                     {ScheduleKind::cosine, "cosine"},
                                                     {ScheduleKind::inverse_sqrt, "inverse_sqrt"}}};

const char* to_string(ScheduleKind k) { return enum_name(kScheduleNames, k); }

ScheduleKind parse_schedule_kind(const std::string& name) { return parse_enum(kScheduleNames, name, "schedule"); }

void Schedule::check() const {
  NL_CHECK(kind == ScheduleKind::constant || kind == ScheduleKind::linear || kind == ScheduleKind::cosine ||
               kind == ScheduleKind::inverse_sqrt,
           "schedule: unknown kind ", int(kind));
  NL_CHECK(std::isfinite(peak_lr) && peak_lr >= 0, "schedule: peak_lr must be finite and >= 0, got ", peak_lr);
  NL_CHECK(std::isfinite(min_lr) && min_lr >= 0, "schedule: min_lr must be finite and >= 0, got ", min_lr);
  NL_CHECK(min_lr <= peak_lr, "schedule: min_lr ", min_lr, " exceeds peak_lr ", peak_lr);
  NL_CHECK(warmup >= 0, "schedule: warmup must be >= 0, got ", warmup);
  NL_CHECK(total >= 0, "schedule: total must be >= 0, got ", total);
  if (kind == ScheduleKind::linear || kind == ScheduleKind::cosine)
    NL_CHECK(total > warmup, "schedule: ", to_string(kind), " needs total > warmup, got total ", total, " and warmup ",
             warmup);
}

double Schedule::lr(int64_t t) const {
  check();
  NL_CHECK(t >= 1, "schedule: step t must be >= 1, got ", t);
  if (t <= warmup) return peak_lr * double(t) / double(warmup);
  switch (kind) {
    case ScheduleKind::constant: return peak_lr;
    case ScheduleKind::linear:
      if (t >= total) return min_lr;
      return peak_lr + (min_lr - peak_lr) * double(t - warmup) / double(total - warmup);
    case ScheduleKind::cosine:
      if (t >= total) return min_lr;
      return min_lr +
             (peak_lr - min_lr) * (1 + std::cos(std::numbers::pi * double(t - warmup) / double(total - warmup))) / 2;
    case ScheduleKind::inverse_sqrt: return peak_lr * std::sqrt(double(std::max<int64_t>(warmup, 1)) / double(t));
  }
  return peak_lr;
}

}  // namespace normlab
