#include "report.hpp"

#include <sys/resource.h>

#include <charconv>
#include <cmath>
#include <sstream>
#include <string_view>

namespace mpicnn::app {

Reporter::Reporter(bool active, const std::string& metrics_path, long steps_per_epoch, int epochs, bool progress_bar)
    : active_(active), terminal_(active && progress_bar), steps_per_epoch_(steps_per_epoch), epochs_(epochs) {
  if (active_) metrics_.open(metrics_path, std::ios::app);
  start_ = window_start_ = std::chrono::steady_clock::now();
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // Linux reports KiB
}

double process_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto seconds = [](const timeval& t) { return double(t.tv_sec) + 1e-6 * double(t.tv_usec); };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

double Reporter::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Reporter::record(const std::string& kind, const std::map<std::string, double>& fields) {
  if (!active_) return;
  std::ostringstream out;
  out << "{\"kind\": \"" << kind << "\"";
  for (const auto& [name, value] : fields) {
    out << ", \"" << name << "\": ";
    // The shortest text that reads back as the same double: scripts compare figures exactly.
    char text[32];
    if (std::isfinite(value)) out << std::string_view(text, std::to_chars(text, text + sizeof text, value).ptr - text);
    else out << "null";
  }
  out << "}\n";
  metrics_ << out.str();
  metrics_.flush();
}

void Reporter::line(const std::string& text) {
  if (!active_) return;
  if (bar_open_) std::fputc('\n', stdout);
  bar_open_ = false;
  std::fprintf(stdout, "%s\n", text.c_str());
  std::fflush(stdout);
}

void Reporter::step(int epoch, long step_in_epoch, long global_step, double loss, double accuracy, int samples,
                    double lr, CommWait comm_wait, bool log_now) {
  window_loss_ += loss, window_correct_ += accuracy;
  window_comm_ += comm_wait.least, window_comm_mean_ += comm_wait.mean;
  ++window_steps_, window_samples_ += samples;
  const bool epoch_end = step_in_epoch == steps_per_epoch_;
  if (!active_ || !(log_now || epoch_end)) return;
  const auto now = std::chrono::steady_clock::now();
  const double seconds = std::chrono::duration<double>(now - window_start_).count();
  const double rate = window_samples_ / std::max(seconds, 1e-9);
  const double mean_loss = window_loss_ / window_steps_, mean_accuracy = window_correct_ / window_steps_;
  const long total_steps = steps_per_epoch_ * epochs_;
  const double eta = (total_steps - global_step) * (seconds / window_steps_);
  record("train", {{"epoch", epoch + 1}, {"step", double(step_in_epoch)}, {"global_step", double(global_step)},
                   {"loss", mean_loss}, {"accuracy", mean_accuracy}, {"img_per_s", rate}, {"lr", lr},
                   {"elapsed_s", elapsed()}, {"comm_wait_share", window_comm_ / std::max(seconds, 1e-9)},
                   {"comm_wait_share_mean", window_comm_mean_ / std::max(seconds, 1e-9)},
                   {"peak_rss_mb", peak_rss_mb()}, {"cpu_s", process_cpu_seconds()}});
  // Regression runs pass NaN accuracies: nothing to show.
  char accuracy_buffer[32] = "";
  if (std::isfinite(mean_accuracy)) std::snprintf(accuracy_buffer, sizeof accuracy_buffer, " acc %.3f", mean_accuracy);
  const std::string accuracy_text = accuracy_buffer;
  char text[200];
  if (terminal_) {
    const int width = 24, filled = int(width * double(step_in_epoch) / steps_per_epoch_);
    std::snprintf(text, sizeof text, "\repoch %d/%d [%s%s] %ld/%ld loss %.4f%s %.0f img/s ETA %.0fs   ", epoch + 1,
                  epochs_, std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), step_in_epoch,
                  steps_per_epoch_, mean_loss, accuracy_text.c_str(), rate, eta);
    std::fputs(text, stdout);
    bar_open_ = true;
  } else {
    std::snprintf(text, sizeof text, "epoch %d/%d step %ld/%ld loss %.4f%s %.0f img/s lr %.3g ETA %.0fs\n", epoch + 1,
                  epochs_, step_in_epoch, steps_per_epoch_, mean_loss, accuracy_text.c_str(), rate, lr, eta);
    std::fputs(text, stdout);
  }
  std::fflush(stdout);
  window_start_ = now;
  window_loss_ = window_correct_ = window_comm_ = window_comm_mean_ = 0;
  window_steps_ = window_samples_ = 0;
}

}  // namespace mpicnn::app
