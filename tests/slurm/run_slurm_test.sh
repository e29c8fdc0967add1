#!/usr/bin/env bash
# SLURM tests on a real single-node cluster started for the test (scripts/slurm/local_cluster.sh),
# with a small MPI probe (mpi_probe.c) standing in for mpicnn.
#
#   bash tests/slurm/run_slurm_test.sh CASE...      CASE: hello requeue requeue_mpirun timelimit cancel
#                                                   term launch, or all
#
#   hello           2-task job runs an MPI hello world through srun --mpi=pmix and mpirun
#   requeue         train.sbatch (srun); `scancel --batch --signal=USR1` reaches the batch shell, which
#                   forwards it to both ranks; they checkpoint, exit 75, the job requeues itself and
#                   the second run (SLURM_RESTART_COUNT=1) resumes
#   requeue_mpirun  the same with MPICNN_LAUNCHER=mpirun
#   timelimit       the same, the signal coming from --time=1 --signal=B:USR1@55
#   cancel          scancel (SIGTERM to all): the ranks checkpoint, the job ends CANCELLED, no requeue
#   term            SIGTERM to the batch shell only: it asks the ranks to checkpoint with SIGUSR1 (srun
#                   would turn a forwarded SIGTERM into SIGKILL); no requeue
#   launch          scripts/slurm/launch.sh runs 2 ranks and picks the binding (no cluster)
#
# Needs root, slurm-wlm, munge and mpicc; exits 77 (skipped) without them. KEEP_SLURM_TEST=1 keeps
# the work directory. Every case brings up its own cluster and tears it down, pass or fail.
set -euo pipefail
# shellcheck source=harness.sh
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

readonly SKIP=77
tests_dir=$repo_root/tests/slurm
probe=

skip() { log "SKIP: $*"; exit "$SKIP"; }

check_prerequisites() {
  ((EUID == 0)) || skip "needs root (slurmd and munged are started by the test)"
  local tool
  for tool in slurmctld slurmd munged sbatch "${MPICC:-mpicc}" mpirun; do
    command -v "$tool" >/dev/null || skip "$tool not found (apt-get install -y slurm-wlm munge openmpi-bin libopenmpi-dev)"
  done
}

compile_probe() {
  probe=$WORK_DIR/mpi_probe
  "${MPICC:-mpicc}" -O1 -o "$probe" "$tests_dir/mpi_probe.c" || fail "could not compile mpi_probe.c"
}

case_hello() {
  cluster_up
  submit_and_wait "$tests_dir/hello.sbatch" "$probe"
  local out=$JOB_STDOUT rank
  for rank in 0 1; do
    [[ $(grep -c "hello from rank $rank of 2 " "$out") == 2 ]] ||
      fail "rank $rank of 2 did not say hello once per launcher in $out"
  done
  expect_line "$out" '^hello job done$'
  log "hello: ranks 0 and 1 of 2 ran under srun --mpi=pmix and under mpirun"
}

# Submits train.sbatch with the probe as mpicnn and waits until both ranks can take a signal.
start_training() {
  local launcher=$1
  printf '[train]\nepochs = 1\n' >"$JOB_DIR/config.ini"
  run_dir=$JOB_DIR/run
  MPICNN_BIN=$probe MPICNN_LAUNCHER=$launcher \
    submit "$repo_root/scripts/slurm/train.sbatch" config.ini run --train.epochs=1
  wait_for "both ranks of job $JOB_ID to start" 30 test -e "$run_dir/ready.0" -a -e "$run_dir/ready.1"
}

# Checks what a USR1 to the batch shell must lead to: forwarded to every rank, checkpoint, one requeue,
# a second run that resumed with SLURM_RESTART_COUNT=1, both runs in one output file.
expect_requeued_and_resumed() {
  [[ "$JOB_STATE" == COMPLETED ]] || fail "job $JOB_ID ended $JOB_STATE (exit $JOB_EXIT), expected COMPLETED"
  [[ "$JOB_RESTARTS" == 1 ]] || fail "job $JOB_ID restarted $JOB_RESTARTS times, expected 1"
  local rank
  for rank in 0 1; do
    # own_signal=10: the rank itself received SIGUSR1 (not only heard of it from the other rank).
    expect_line "$run_dir/signal.$rank" '^own_signal=10 .*restart_count=(unset|0) '
    expect_line "$run_dir/resumed.$rank" '^resumed restart_count=1$'
  done
  expect_line "$JOB_STDOUT" 'received SIGUSR1'
  expect_line "$JOB_STDOUT" 'forwarded SIGUSR1 to the ranks'
  expect_line "$JOB_STDOUT" 'training exited with status 75'
  expect_line "$JOB_STDOUT" "requeueing job $JOB_ID"
  expect_line "$JOB_STDOUT" 'run 2 \(SLURM_RESTART_COUNT=1\)'
  expect_line "$JOB_STDOUT" 'training exited with status 0'
}

requeue_with() {
  local launcher=$1
  cluster_up
  start_training "$launcher"
  scancel --batch --signal=USR1 "$JOB_ID" || fail "scancel --batch --signal=USR1 $JOB_ID failed"
  wait_for_job "$JOB_ID" 60
  expect_requeued_and_resumed
  log "requeue ($launcher): USR1 forwarded to both ranks, checkpoint, requeue, resumed with SLURM_RESTART_COUNT=1"
}

case_requeue() { requeue_with srun; }
case_requeue_mpirun() { requeue_with mpirun; }

case_timelimit() {
  cluster_up
  # SLURM checks time limits periodically, so the signal comes some seconds after the 5 s mark.
  SBATCH_OPTS=(--time=1 --signal=B:USR1@55)
  start_training srun
  SBATCH_OPTS=()
  wait_for_job "$JOB_ID" 90
  expect_requeued_and_resumed
  log "timelimit: --signal=B:USR1@55 led to checkpoint, requeue and resume"
}

# The ranks of a job that ends must have checkpointed, and nothing may have been requeued.
expect_checkpointed_not_requeued() {
  local signals=$1 rank
  [[ "$JOB_RESTARTS" == 0 ]] || fail "job $JOB_ID was requeued ($JOB_RESTARTS restarts)"
  for rank in 0 1; do
    expect_line "$run_dir/signal.$rank" "^own_signal=($signals) "
  done
  [[ -e "$run_dir/checkpoint" ]] || fail "no checkpoint in $run_dir"
  expect_line "$JOB_STDOUT" 'received SIGTERM'
  expect_line "$JOB_STDOUT" 'training exited with status 75'
  if grep -q 'requeueing job' "$JOB_STDOUT"; then fail "job $JOB_ID asked for a requeue"; fi
}

case_cancel() {
  cluster_up
  start_training srun
  # SLURM sends SIGTERM to the ranks and the batch shell, which adds a SIGUSR1.
  scancel "$JOB_ID" || fail "scancel $JOB_ID failed"
  wait_for_job "$JOB_ID" 60
  [[ "$JOB_STATE" == CANCELLED ]] || fail "job $JOB_ID ended $JOB_STATE, expected CANCELLED"
  expect_checkpointed_not_requeued '15|10'
  log "cancel: both ranks checkpointed, job CANCELLED, no requeue"
}

case_term() {
  cluster_up
  start_training srun
  # Only the batch shell gets SIGTERM: it must pass on SIGUSR1 (srun would turn SIGTERM into SIGKILL).
  scancel --batch --signal=TERM "$JOB_ID" || fail "scancel --batch --signal=TERM $JOB_ID failed"
  wait_for_job "$JOB_ID" 60
  [[ "$JOB_STATE" != COMPLETED ]] || fail "job $JOB_ID COMPLETED after SIGTERM, expected a failure state"
  expect_checkpointed_not_requeued 10
  log "term: the batch shell turned SIGTERM into SIGUSR1 for both ranks, checkpoint, no requeue"
}

case_launch() {
  local out
  out=$(MPICNN_BIN=$probe bash "$repo_root/scripts/slurm/launch.sh" -np 2 --threads 1 -- hello 2>&1) ||
    { echo "$out" >&2; fail "launch.sh -np 2 failed"; }
  grep -q -- '--bind-to core' <<<"$out" || fail "1 thread per rank should bind to core: $out"
  local rank
  for rank in 0 1; do
    grep -q "hello from rank $rank of 2 " <<<"$out" || fail "rank $rank missing: $out"
  done
  out=$(MPICNN_BIN=$probe bash "$repo_root/scripts/slurm/launch.sh" -np 2 --threads 2 --dry-run -- hello 2>&1)
  grep -q -- '--bind-to none' <<<"$out" || fail "2 threads per rank should not bind: $out"
  log "launch: 2 ranks ran; binding core for 1 thread per rank, none for 2"
}

all_cases=(hello requeue requeue_mpirun timelimit cancel term launch)
(($#)) || { echo "usage: $0 CASE... (${all_cases[*]}, all)" >&2; exit 2; }
cases=("$@")
[[ "${cases[*]}" == all ]] && cases=("${all_cases[@]}")
for c in "${cases[@]}"; do
  declare -F "case_$c" >/dev/null || { echo "unknown case '$c' (known: ${all_cases[*]}, all)" >&2; exit 2; }
done

check_prerequisites
harness_init
compile_probe
for c in "${cases[@]}"; do
  started=$SECONDS
  log "case $c"
  use_job_dir "$c"
  "case_$c"
  cluster_down
  log "case $c passed in $((SECONDS - started))s"
done
