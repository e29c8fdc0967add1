#pragma once
// What rank 0 shows and records while training: a progress bar on a terminal (plain periodic
// lines otherwise, e.g. in SLURM logs), epoch summaries, and metrics.jsonl in the run folder.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>

namespace mpicnn::app {

// This process's peak resident memory in MiB (rank 0's, in the records it writes).
double peak_rss_mb();
// CPU seconds this process has used so far, every thread, user and system: on a shared machine,
// images over CPU time of a window is a rate that other work taking turns on the cores leaves alone.
double process_cpu_seconds();

// Seconds a step waited on the gradient sum after backward. The rank that arrived last waited only
// for the communication backward did not hide: the least wait over ranks; the mean over ranks
// adds the time ranks waited for slower ones.
struct CommWait {
  double least = 0, mean = 0;
};

class Reporter {
 public:
  Reporter(bool active, const std::string& metrics_path, long steps_per_epoch, int epochs, bool progress_bar);
  // One training step finished (called on every step; prints and records at `log_interval`).
  void step(int epoch, long step_in_epoch, long global_step, double loss, double accuracy, int samples, double lr,
            CommWait comm_wait, bool log_now);
  // A record of any kind: {"kind": kind, ...fields}.
  void record(const std::string& kind, const std::map<std::string, double>& fields);
  void line(const std::string& text);  // a message on its own line (ends a progress bar first)
  double elapsed() const;

 private:
  bool active_, terminal_;
  std::ofstream metrics_;
  long steps_per_epoch_;
  int epochs_;
  std::chrono::steady_clock::time_point start_, window_start_;
  double window_loss_ = 0, window_correct_ = 0, window_comm_ = 0, window_comm_mean_ = 0;
  long window_steps_ = 0, window_samples_ = 0;
  bool bar_open_ = false;
};

}  // namespace mpicnn::app
