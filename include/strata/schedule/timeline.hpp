#pragma once
//! \file
//! Printable forms of a schedule: a timeline for people and JSON for programs.

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string>

#include "strata/schedule/schedule.hpp"
#include "strata/schedule/wire.hpp"

namespace strata {

//! A timeline of steps [0, steps): one row per level, highest first, `#` where it averages, `-`
//! during warm-up, `.` elsewhere; rows wrap every `width` steps. Followed by a table of syncs per
//! level and, when `param_bytes` is not 0, the bytes each rank sends per level (ring all-reduce).
//!
//! \code
//! using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>, strata::Level<8, 64>>;
//! std::string t = strata::format_timeline(strata::Schedule<H>{}, 16);
//! assert(t.find("level 2  g=64  P=8  #.......#.......") != std::string::npos);
//! \endcode
template <schedule_type S>
std::string format_timeline(const S& schedule, std::size_t steps, std::size_t param_bytes = 0,
                            std::size_t width = 64) {
  const auto levels = schedule.levels();
  const std::size_t n = levels.size();
  width = std::max<std::size_t>(width, 10);

  auto pad = [](std::string s, std::size_t w) {
    if (s.size() < w) s.append(w - s.size(), ' ');
    return s;
  };
  std::vector<std::string> labels(n);
  std::size_t label_width = 0;
  for (std::size_t i = 0; i < n; ++i) {
    labels[i] = "level " + std::to_string(i) + "  g=" + std::to_string(levels[i].group_size);
    label_width = std::max(label_width, labels[i].size());
  }
  std::size_t period_width = 0;
  for (std::size_t i = 0; i < n; ++i) {
    period_width = std::max(period_width, std::to_string(levels[i].period).size() + 2);
  }
  for (std::size_t i = 0; i < n; ++i) {
    labels[i] = pad(labels[i], label_width) + "  " +
                pad("P=" + std::to_string(levels[i].period), period_width) + "  ";
  }
  const std::size_t margin = label_width + 2 + period_width + 2;

  std::string out = "phase: " + std::string(S::phase::name) +
                    ", warm-up: " + std::to_string(schedule.warmup()) +
                    " steps, hyper-period: " + std::to_string(schedule.hyper_period()) +
                    "; '#' averages, '-' warm-up, '.' nothing\n";
  for (std::size_t begin = 0; begin < steps; begin += width) {
    const std::size_t end = std::min(steps, begin + width);
    // Ruler: the step number written at every multiple of 10 that has room for it.
    std::string ruler(margin, ' ');
    ruler.replace(0, 4, "step");
    for (std::size_t s = begin; s < end; ++s) {
      const std::size_t col = margin + (s - begin);
      if (s % 10 == 0 && ruler.size() <= col) {
        ruler.resize(col, ' ');
        ruler += std::to_string(s);
      }
    }
    out += ruler + '\n';
    for (std::size_t i = n; i-- > 0;) {
      std::string row = labels[i];
      for (std::size_t s = begin; s < end; ++s) {
        const auto l = schedule.level_at(s);
        row += s < schedule.warmup() ? '-' : (l && *l == i ? '#' : '.');
      }
      out += row + '\n';
    }
  }

  const auto counts = schedule.sync_counts(steps);
  std::size_t total = 0;
  for (std::size_t c : counts) total += c;
  out += "\nsyncs over " + std::to_string(steps) + " steps:\n";
  char line[160];
  for (std::size_t i = n; i-- > 0;) {
    const double share = steps == 0 ? 0.0 : 100.0 * static_cast<double>(counts[i]) / steps;
    std::snprintf(line, sizeof line,
                  "  level %zu  group size %-6zu period %-5zu syncs %-8zu (%.1f%% of steps)", i,
                  levels[i].group_size, levels[i].period, counts[i], share);
    out += line;
    if (param_bytes != 0) {
      const double b =
          static_cast<double>(counts[i]) *
          RingAllReduce::bytes_per_rank(static_cast<double>(param_bytes), levels[i].group_size);
      std::snprintf(line, sizeof line, "  %.3f MB sent per rank (ring)", b / 1e6);
      out += line;
    }
    out += '\n';
  }
  std::snprintf(line, sizeof line, "  no sync  %zu steps\n", steps - total);
  out += line;
  return out;
}

//! The schedule of steps [0, steps) as JSON:
//! `{"steps":[{"step":0,"level":2,"group_size":64},...]}`, with `"level":null,"group_size":null`
//! where nothing runs.
//!
//! \code
//! using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>>;
//! assert(strata::format_json(strata::Schedule<H>{}, 2) ==
//!        R"({"steps":[{"step":0,"level":1,"group_size":32},)"
//!        R"({"step":1,"level":null,"group_size":null}]})");
//! \endcode
template <schedule_type S>
std::string format_json(const S& schedule, std::size_t steps) {
  std::string out = "{\"steps\":[";
  for (std::size_t s = 0; s < steps; ++s) {
    if (s != 0) out += ',';
    out += "{\"step\":" + std::to_string(s);
    if (const auto l = schedule.level_at(s)) {
      out += ",\"level\":" + std::to_string(*l) +
             ",\"group_size\":" + std::to_string(schedule.levels()[*l].group_size) + '}';
    } else {
      out += ",\"level\":null,\"group_size\":null}";
    }
  }
  out += "]}";
  return out;
}

}  // namespace strata
