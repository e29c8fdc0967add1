// mpicnn: one executable, subcommands train, eval, predict, export, convert, inspect.
// Only main catches: it prints one line "error: ..." and ends the job with exit status 1. When
// every rank met an error (a bad option, config, dataset or checkpoint is seen by all), the ranks
// end together and normally; when one rank fails alone, MPI_Abort ends the others, so no rank
// waits forever for a peer that has failed.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>

#include "apps/commands.hpp"
#include "apps/settings.hpp"
#include "core/errors.hpp"
#include "distributed/watchdog.hpp"

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
      {"detect", {run_detect, "write a detection checkpoint's boxes of a split as COCO results JSON or HDF5"}},
      {"embed", {run_embed, "write a checkpoint's embeddings of a split (cut before a final cosine layer) and verification figures"}},
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
                              "; known: convert, embed, eval, export, inspect, predict, train");
  }
  return it->second.first(mpicnn::app::Args(argv + 2, argv + argc), comm);
}

// How long a failed rank waits for the others to report an error too. Ranks meet the errors of
// the checks before training within milliseconds of each other (they start from MPI_Init's
// synchronisation and read the same options and files), but on a busy machine a rank may lose
// its core for seconds (a window of 3 s was missed once with 2 ranks on 2 cores at a load average
// of 6). A rank that fails alone ends the job this much later.
constexpr double kAgreementSeconds = 5.0;

void print_error(int rank, int size, const std::string& message) {
  if (size > 1 && rank != 0) std::fprintf(stderr, "error: [rank %d] %s\n", rank, message.c_str());
  else std::fprintf(stderr, "error: %s\n", message.c_str());
  std::fflush(stderr);
}

// Returns the exit status when every rank failed (the job then ends normally, without Open MPI's
// MPI_ABORT banner); otherwise ends the whole job with MPI_Abort.
int fail(const std::exception& error, const mpicnn::dist::Communicator* comm) {
  const int rank = comm ? comm->rank() : 0, size = comm ? comm->size() : 1;
  const std::string message = error.what();
  // A hang is reported by the ranks still answering, about one that is not: there is nobody to agree with.
  if (size > 1 && dynamic_cast<const mpicnn::dist::HangError*>(&error) == nullptr) {
    const std::vector<std::uint64_t> ids =
        comm->errors_on_every_rank(mpicnn::dist::fingerprint(message.data(), message.size()), kAgreementSeconds);
    if (!ids.empty()) {
      // Each distinct message once, from the lowest rank that holds it: rank 0's line alone when all agree.
      if (std::find(ids.begin(), ids.begin() + rank, ids[rank]) == ids.begin() + rank) print_error(rank, size, message);
      return 1;
    }
  }
  print_error(rank, size, message);
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
  return 1;
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
      return fail(error, comm.get());
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return code;
}
