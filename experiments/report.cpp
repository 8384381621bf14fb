// Sweep summaries: the stability map, LR sensitivity and the verdicts, from a results file.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "experiments/sweep.h"

namespace normlab {

std::string RunResult::label(const std::string& axis) const {
  for (const auto& [a, l] : labels)
    if (a == axis) return l;
  return "";
}

std::vector<const RunResult*> SweepResults::select(
    const std::vector<std::pair<std::string, std::string>>& match) const {
  std::vector<const RunResult*> out;
  for (const RunResult& r : runs)
    if (std::all_of(match.begin(), match.end(), [&](const auto& m) { return r.label(m.first) == m.second; }))
      out.push_back(&r);
  return out;
}

int SweepResults::position(const std::string& axis, const std::string& label) const {
  const auto it = axis_values.find(axis);
  if (it == axis_values.end()) return 1 << 20;
  const auto at = std::find(it->second.begin(), it->second.end(), label);
  return at == it->second.end() ? 1 << 20 : int(at - it->second.begin());
}

std::vector<int> SweepResults::positions(const RunResult& r, const std::vector<std::string>& axes) const {
  std::vector<int> key;
  for (const std::string& a : axes) key.push_back(position(a, r.label(a)));
  return key;
}

const RunResult* SweepResults::find(const std::vector<std::pair<std::string, std::string>>& match) const {
  const std::vector<const RunResult*> found = select(match);
  return found.size() == 1 ? found[0] : nullptr;
}

double lr_sensitivity(const std::vector<const RunResult*>& runs) {
  NL_CHECK(!runs.empty(), "lr_sensitivity: no runs");
  // loss(eta) = min(final loss, initial loss); a diverged run counts as its initial loss.
  std::vector<double> loss;
  for (const RunResult* r : runs)
    loss.push_back(r->diverged || !std::isfinite(r->final_loss) ? r->initial_loss
                                                                 : std::min(r->final_loss, r->initial_loss));
  const double best = *std::min_element(loss.begin(), loss.end());
  double total = 0;
  for (double l : loss) total += l - best;
  return total / double(loss.size());
}

namespace {

// Runs grouped by their labels on `axes`, in the axes' order: (key, label text) -> runs.
std::map<std::vector<int>, std::pair<std::string, std::vector<const RunResult*>>> group_by(
    const SweepResults& s, const std::vector<std::string>& axes) {
  std::map<std::vector<int>, std::pair<std::string, std::vector<const RunResult*>>> groups;
  for (const RunResult& r : s.runs) {
    std::string text;
    for (const std::string& a : axes) {
      if (!text.empty()) text += '/';
      text += r.label(a);
    }
    auto& g = groups[s.positions(r, axes)];
    g.first = text.empty() ? "all" : text;
    g.second.push_back(&r);
  }
  return groups;
}

std::string cell(const RunResult* r) {
  char buf[32];
  if (!r) return "-";
  if (r->diverged) std::snprintf(buf, sizeof buf, "div@%lld", (long long)r->diverged_step);
  else std::snprintf(buf, sizeof buf, "%.4f", r->final_loss);
  return buf;
}

void print_map(const SweepResults& s, std::FILE* out) {
  const std::string& col = s.map_columns;
  std::vector<std::string> row_axes;
  for (const std::string& a : s.axes)
    if (a != col) row_axes.push_back(a);
  std::vector<std::string> columns;
  if (!col.empty()) {
    auto it = s.axis_values.find(col);
    if (it != s.axis_values.end()) columns = it->second;
  }
  if (columns.empty()) columns.push_back("");
  const auto rows = group_by(s, row_axes);
  size_t width = 8;
  for (const auto& [key, row] : rows) width = std::max(width, row.first.size());
  std::string row_title;
  for (const std::string& a : row_axes) {
    if (!row_title.empty()) row_title += '/';
    row_title += a;
  }
  width = std::max(width, row_title.size());
  std::fprintf(out, "stability map: final eval loss (chance %.4f); div@N: diverged at step N; -: not run\n",
               s.runs.front().chance_loss);
  std::fprintf(out, "  %-*s", int(width), row_title.c_str());
  for (const std::string& c : columns) std::fprintf(out, "  %10s", col.empty() ? "final" : (col + "=" + c).c_str());
  std::fprintf(out, "\n");
  for (const auto& [key, row] : rows) {
    std::fprintf(out, "  %-*s", int(width), row.first.c_str());
    for (const std::string& c : columns) {
      const RunResult* found = nullptr;
      for (const RunResult* r : row.second)
        if (col.empty() || r->label(col) == c) found = r;
      std::fprintf(out, "  %10s", cell(found).c_str());
    }
    std::fprintf(out, "\n");
  }
}

void print_lr_sensitivity(const SweepResults& s, std::FILE* out) {
  if (std::find(s.axes.begin(), s.axes.end(), "lr") == s.axes.end()) return;
  std::vector<std::string> other;
  for (const std::string& a : s.axes)
    if (a != "lr") other.push_back(a);
  const auto groups = group_by(s, other);
  size_t width = 8;
  for (const auto& [key, g] : groups) width = std::max(width, g.first.size());
  std::fprintf(out, "\nLR sensitivity (Wortsman et al. 2023: mean over LRs of min(loss, initial) - best):\n");
  std::fprintf(out, "  %-*s  %11s  %9s  %9s  %8s\n", int(width), "config", "sensitivity", "best lr", "best loss",
               "diverged");
  for (const auto& [key, g] : groups) {
    const RunResult* best = nullptr;
    int diverged = 0;
    for (const RunResult* r : g.second) {
      diverged += r->diverged;
      if (!r->diverged && (!best || r->final_loss < best->final_loss)) best = r;
    }
    std::fprintf(out, "  %-*s  %11.4f  %9s  %9s  %4d of %d\n", int(width), g.first.c_str(), lr_sensitivity(g.second),
                 best ? best->label("lr").c_str() : "-", best ? cell(best).c_str() : "-", diverged,
                 int(g.second.size()));
  }
}

}  // namespace

void report(const SweepResults& s, const Experiment* e, std::FILE* out) {
  if (s.runs.empty()) {
    std::fprintf(out, "%s: no runs yet\n", s.path.c_str());
    return;
  }
  double seconds = 0;
  for (const RunResult& r : s.runs) seconds += r.seconds;
  std::fprintf(out, "%s (%s): %zu runs, %.1f s of training\n\n", s.experiment.c_str(), s.path.c_str(), s.runs.size(),
               seconds);
  print_map(s, out);
  print_lr_sensitivity(s, out);
  if (!e || !e->verdicts) return;
  std::vector<Verdict> verdicts;
  try {
    verdicts = e->verdicts(s);
  } catch (const std::exception& err) {
    // A sweep narrowed by --set may lack the runs a verdict compares.
    std::fprintf(out, "\nno verdicts: this file lacks runs they compare (%s)\n", err.what());
    return;
  }
  std::fprintf(out, "\nclaims and verdicts:\n");
  for (const Verdict& v : verdicts)
    std::fprintf(out, "\n  %s: %s\n    measured: %s\n    verdict:  %s\n", v.source.c_str(), v.claim.c_str(),
                 v.measured.c_str(), v.verdict.c_str());
}

}  // namespace normlab
