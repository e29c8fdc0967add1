/* A stand-in for an MPI program under SLURM, used by run_slurm_test.sh.
 *
 *   mpi_probe hello
 *       Each rank prints "hello from rank R of S (host H, pid P)".
 *   mpi_probe train --config FILE --output RUN_DIR [--train.key=value ...]
 *       Follows the `mpicnn train` contract the SLURM scripts rely on: when RUN_DIR holds a checkpoint
 *       it "resumes" (writes RUN_DIR/resumed.R, exits 0); otherwise it steps every 0.1 s until
 *       SIGUSR1, SIGTERM or SIGINT reaches any rank, then every rank writes RUN_DIR/signal.R, rank 0
 *       writes RUN_DIR/checkpoint, and all exit 75. RUN_DIR/ready.R appears once rank R's handlers
 *       are installed, so a test never signals a rank that would die of the default action.
 *       Without a signal it finishes after $MPI_PROBE_MAX_SECONDS (default 120) and exits 0.
 */
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_CHECKPOINTED = 75 };

static volatile sig_atomic_t stop_signal = 0;

static void on_stop_signal(int sig) { stop_signal = sig; }

static const char *restart_count(void) {
  const char *count = getenv("SLURM_RESTART_COUNT");
  return count ? count : "unset";
}

static void write_marker(const char *dir, const char *name, int rank, const char *text) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.%d", dir, name, rank);
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "mpi_probe: cannot write %s\n", path);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  fprintf(f, "%s\n", text);
  fclose(f);
}

static int hello(int rank, int size) {
  char host[256] = "?";
  gethostname(host, sizeof host);
  printf("hello from rank %d of %d (host %s, pid %d)\n", rank, size, host, (int)getpid());
  return 0;
}

static int train(int rank, int argc, char **argv) {
  const char *run_dir = NULL;
  for (int i = 2; i + 1 < argc; ++i)
    if (strcmp(argv[i], "--output") == 0) run_dir = argv[i + 1];
  if (!run_dir) {
    if (rank == 0) fprintf(stderr, "mpi_probe: train needs --output RUN_DIR\n");
    return 2;
  }
  if (rank == 0) mkdir(run_dir, 0755);
  MPI_Barrier(MPI_COMM_WORLD);

  char checkpoint[4096];
  snprintf(checkpoint, sizeof checkpoint, "%s/checkpoint", run_dir);
  char text[256];
  if (access(checkpoint, F_OK) == 0) {
    snprintf(text, sizeof text, "resumed restart_count=%s", restart_count());
    write_marker(run_dir, "resumed", rank, text);
    printf("rank %d: %s\n", rank, text);
    return 0;
  }

  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGUSR1, &action, NULL);
  sigaction(SIGTERM, &action, NULL);
  sigaction(SIGINT, &action, NULL);
  write_marker(run_dir, "ready", rank, "ready");

  const char *max_env = getenv("MPI_PROBE_MAX_SECONDS");
  const long max_steps = 10L * (max_env ? atol(max_env) : 120);
  const struct timespec step_time = {0, 100 * 1000 * 1000};
  for (long step = 0; step < max_steps; ++step) {
    nanosleep(&step_time, NULL);
    /* Every rank stops at the same step boundary, whichever rank saw the signal. */
    int local = stop_signal, any = 0;
    MPI_Allreduce(&local, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any) {
      snprintf(text, sizeof text, "own_signal=%d stop_signal=%d restart_count=%s step=%ld",
               (int)stop_signal, any, restart_count(), step);
      write_marker(run_dir, "signal", rank, text);
      printf("rank %d: %s\n", rank, text);
      MPI_Barrier(MPI_COMM_WORLD);
      if (rank == 0) {
        FILE *f = fopen(checkpoint, "w");
        if (f) fclose(f);
      }
      MPI_Barrier(MPI_COMM_WORLD);
      return EXIT_CHECKPOINTED;
    }
  }
  printf("rank %d: finished without a signal\n", rank);
  return 0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int status = 2;
  if (argc >= 2 && strcmp(argv[1], "hello") == 0)
    status = hello(rank, size);
  else if (argc >= 2 && strcmp(argv[1], "train") == 0)
    status = train(rank, argc, argv);
  else if (rank == 0)
    fprintf(stderr, "usage: mpi_probe hello | train --config FILE --output RUN_DIR [...]\n");
  fflush(stdout);
  MPI_Finalize();
  return status;
}
