#pragma once
// The subcommands of the mpicnn executable. Each returns the process exit code.
#include <string>
#include <vector>

#include "distributed/comm.hpp"

namespace mpicnn::app {

// Exit code of a training run stopped by SIGTERM/SIGINT/SIGUSR1 after writing a checkpoint
// (EX_TEMPFAIL: "try again", what a requeued batch job does).
inline constexpr int kExitStopped = 75;

using Args = std::vector<std::string>;
int run_train(const Args& args, const dist::Communicator& comm);
int run_eval(const Args& args, const dist::Communicator& comm);
int run_predict(const Args& args, const dist::Communicator& comm);
int run_export(const Args& args, const dist::Communicator& comm);
int run_convert(const Args& args, const dist::Communicator& comm);
int run_inspect(const Args& args, const dist::Communicator& comm);
int run_embed(const Args& args, const dist::Communicator& comm);
int run_detect(const Args& args, const dist::Communicator& comm);

}  // namespace mpicnn::app
