// mpicnn: one executable, subcommands train, eval, predict, export, convert, inspect.
// Only main catches: it prints one line "error: ..." and ends the whole job with MPI_Abort, so no
// rank waits forever for a peer that has failed.
#include <csignal>
#include <cstdio>
#include <functional>
#include <map>
#include <thread>

#include "apps/commands.hpp"
#include "apps/settings.hpp"
#include "core/errors.hpp"

namespace {

using Command = std::function<int(const mpicnn::app::Args&, const mpicnn::dist::Communicator&)>;

const std::map<std::string, std::pair<Command, const char*>>& commands() {
  using namespace mpicnn::app;
  static const std::map<std::string, std::pair<Command, const char*>> table = {
      {"train", {run_train, "train a model (under mpirun: data-parallel across ranks)"}},
      {"eval", {run_eval, "evaluate a checkpoint on a dataset split: accuracy, confusion matrix, per-class metrics"}},
      {"predict", {run_predict, "write class probabilities or outputs per sample to HDF5 or CSV"}},
      {"export", {run_export, "export a checkpoint to ONNX or an HDF5 inference bundle"}},
      {"convert", {run_convert, "convert IDX (MNIST family), MedMNIST .npz or an image folder to an HDF5 dataset"}},
      {"inspect", {run_inspect, "summarise a dataset, checkpoint or bundle"}},
  };
  return table;
}

std::string usage() {
  std::string text = "usage: mpicnn <command> [options]   (mpicnn <command> --help for its options)\n\ncommands:\n";
  for (const auto& [name, entry] : commands()) {
    std::string left = "  " + name;
    left.resize(12, ' ');
    text += left + entry.second + "\n";
  }
  return text;
}

int run(int argc, char** argv, const mpicnn::dist::Communicator& comm) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    if (comm.is_root()) std::fputs(usage().c_str(), argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  const auto it = commands().find(name);
  if (it == commands().end()) {
    std::vector<std::string> known;
    for (const auto& [command, entry] : commands()) known.push_back(command);
    const std::string suggestion = mpicnn::app::nearest(name, known);
    throw mpicnn::ConfigError("unknown command '" + name + "'" +
                              (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)") +
                              "; known: convert, eval, export, inspect, predict, train");
  }
  return it->second.first(mpicnn::app::Args(argv + 2, argv + argc), comm);
}

// Errors every rank meets alike (a bad option or config; a non-finite loss, known to all ranks
// after the step's allreduce) are printed once, by rank 0; the other ranks give rank 0 a moment
// to print before they end the job themselves.
void fail(const std::exception& error, const mpicnn::dist::Communicator* comm) {
  const bool alike_everywhere = dynamic_cast<const mpicnn::ConfigError*>(&error) != nullptr ||
                                dynamic_cast<const mpicnn::NumericError*>(&error) != nullptr;
  const int rank = comm ? comm->rank() : 0, size = comm ? comm->size() : 1;
  if (rank == 0 || !alike_everywhere) {
    if (size > 1 && rank != 0) std::fprintf(stderr, "error: [rank %d] %s\n", rank, error.what());
    else std::fprintf(stderr, "error: %s\n", error.what());
    std::fflush(stderr);
  } else {
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
}

}  // namespace

int main(int argc, char** argv) {
  // A write beyond a file-size limit must fail with an error, not kill the process mid-checkpoint.
  std::signal(SIGXFSZ, SIG_IGN);
  int code = 1;
  try {
    mpicnn::dist::Environment environment(&argc, &argv);
    std::unique_ptr<mpicnn::dist::Communicator> comm;
    try {
      comm = std::make_unique<mpicnn::dist::Communicator>();
      code = run(argc, argv, *comm);
    } catch (const std::exception& error) {
      fail(error, comm.get());
      return 1;
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return code;
}
