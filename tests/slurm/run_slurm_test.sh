#!/usr/bin/env bash
# SLURM tests on a real single-node cluster started for the test (scripts/slurm/local_cluster.sh),
# with a small MPI probe (mpi_probe.c) standing in for mpicnn, or with mpicnn itself (train*).
#
#   bash tests/slurm/run_slurm_test.sh [--mpicnn PATH] [--deadline SECONDS] CASE...
#       CASE: hello requeue requeue_mpirun timelimit cancel term launch train train_requeue, or all
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
#   train           mpicnn: train.sbatch trains 2 ranks (srun --mpi=pmix) for a fixed number of steps;
#                   the job COMPLETES with exit 0 and leaves the final checkpoint in the run folder
#   train_requeue   mpicnn: the same job gets `scancel --batch --signal=USR1` once it has taken steps;
#                   it checkpoints, requeues itself, the second run (SLURM_RESTART_COUNT=1) resumes from
#                   that checkpoint, and the final weights and optimizer state are bitwise those of an
#                   uninterrupted 2-rank run of the same length under plain mpirun (launch.sh)
#
# --mpicnn: the executable for the train* cases (default $MPICNN_BIN, else build/mpicnn). --deadline:
# stop with a failure after SECONDS, tearing the cluster down (CTest's own timeout kills with SIGKILL).
# Needs root, slurm-wlm, munge, mpirun, mpicc (probe cases) and /usr/bin/python3 with h5py (train*);
# exits 77 (skipped) without them. KEEP_SLURM_TEST=1 keeps the work directory. Every case brings up
# its own cluster and tears it down, pass or fail.
set -euo pipefail
# shellcheck source=harness.sh
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

readonly SKIP=77
tests_dir=$repo_root/tests/slurm
probe=
mpicnn=${MPICNN_BIN:-$repo_root/build/mpicnn}
python=/usr/bin/python3
dataset=

skip() { log "SKIP: $*"; exit "$SKIP"; }

check_prerequisites() {
  ((EUID == 0)) || skip "needs root (slurmd and munged are started by the test)"
  local tool tools=(slurmctld slurmd munged sbatch mpirun)
  ((need_probe)) && tools+=("${MPICC:-mpicc}")
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || skip "$tool not found (apt-get install -y slurm-wlm munge openmpi-bin libopenmpi-dev)"
  done
  if ((need_mpicnn)); then
    # Jobs run in their own folders.
    mpicnn=$(realpath -m -- "$mpicnn")
    [[ -x "$mpicnn" ]] || fail "mpicnn executable '$mpicnn' not found: build it, or pass --mpicnn PATH"
    "$python" -c 'import h5py, numpy' 2>/dev/null || skip "$python cannot import h5py and numpy (apt-get install -y python3-h5py)"
  fi
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
  # mpirun -q: an error every rank meets leaves its one line and no mpirun note; a rank killed by a
  # signal, which -q leaves silent, is named by launch.sh.
  local fails=$WORK_DIR/fails.sh status
  printf '#!/bin/sh\n[ "$1" = segv ] && kill -SEGV $$\n[ "$OMPI_COMM_WORLD_RANK" = 0 ] && echo "error: bad" >&2\nexit 1\n' >"$fails"
  chmod +x "$fails"
  status=0; out=$(MPICNN_BIN=$fails bash "$repo_root/scripts/slurm/launch.sh" -np 2 -- error 2>&1 | grep -v '^launch.sh: 2 ranks') || status=$?
  [[ "$out" == "error: bad" ]] || fail "an error on every rank should print its line alone, got: $out"
  status=0; out=$(MPICNN_BIN=$fails bash "$repo_root/scripts/slurm/launch.sh" -np 2 -- segv 2>&1) || status=$?
  ((status == 139)) || fail "a rank killed by SIGSEGV: launch.sh exit status $status, expected 139"
  grep -q 'launch.sh: error: a rank ended on signal 11 (SEGV)' <<<"$out" || fail "no line naming SIGSEGV: $out"
  log "launch: 2 ranks ran; binding core for 1 thread per rank, none for 2; mpirun -q, SIGSEGV named"
}

# ---- cases with mpicnn itself ----

# The regression example (configs/regression.ini) on 512 small images: 16 steps an epoch at a global
# batch of 32, one thread per rank, no evaluation; train.max_steps ends the run, not the epochs.
train_args() {
  if [[ -z "$dataset" ]]; then
    dataset=$WORK_DIR/discs.h5
    "$python" "$repo_root/scripts/make_disc_dataset.py" "$dataset" 512 64 >/dev/null ||
      fail "scripts/make_disc_dataset.py could not write $dataset"
  fi
  args=("$repo_root/configs/regression.ini" "$1" --data.path="$dataset" --data.eval_split=none
        --train.epochs=1000 --train.max_steps="$2" --train.batch_size=32 --train.threads=1
        --train.progress=lines --train.log_interval=5)
}

# Prints the checkpoint a run folder's `latest` file names.
latest_checkpoint() {
  local name
  read -r name <"$1/latest" 2>/dev/null || fail "$1 has no 'latest' file (no checkpoint)"
  [[ -e "$1/$name" ]] || fail "$1/latest names $name, which does not exist"
  echo "$1/$name"
}

# Fails unless checkpoint $1 sits at global step $2 and was trained on 2 ranks.
expect_checkpoint_at() {
  local summary
  summary=$("$mpicnn" inspect "$1" 2>&1) || { echo "$summary" >&2; fail "mpicnn inspect $1 failed"; }
  grep -qE "^ *position: .*, global step $2(,|$)" <<<"$summary" ||
    fail "$1 is not at global step $2: $(grep position <<<"$summary")"
  grep -q 'trained on 2 ranks' <<<"$summary" || fail "$1 was not trained on 2 ranks: $(head -n 1 <<<"$summary")"
}

# Succeeds once the run's metrics.jsonl records global step $2 or later.
steps_taken_at_least() {
  local last
  last=$(grep -o '"global_step": [0-9]*' "$1/metrics.jsonl" 2>/dev/null | tail -n 1 | grep -o '[0-9]*$')
  [[ -n "$last" ]] && ((last >= $2))
}

submit_training() {
  local run_dir=$1 steps=$2 args
  train_args "$run_dir" "$steps"
  MPICNN_BIN=$mpicnn MPICNN_LAUNCHER=srun submit "$repo_root/scripts/slurm/train.sbatch" "${args[@]}"
}

case_train() {
  local steps=40 run_dir=$JOB_DIR/run
  cluster_up
  submit_training "$run_dir" "$steps"
  wait_for_job "$JOB_ID" 90
  [[ "$JOB_STATE" == COMPLETED && "$JOB_EXIT" == 0:0 ]] ||
    fail "job $JOB_ID ended $JOB_STATE (exit $JOB_EXIT), expected COMPLETED (exit 0:0)"
  [[ "$JOB_RESTARTS" == 0 ]] || fail "job $JOB_ID was requeued ($JOB_RESTARTS restarts)"
  expect_line "$JOB_STDOUT" 'ranks x 1 CPUs, launcher srun'
  expect_line "$JOB_STDOUT" "reached train.max_steps = $steps"
  expect_line "$JOB_STDOUT" 'training exited with status 0'
  expect_checkpoint_at "$(latest_checkpoint "$run_dir")" "$steps"
  log "train: job COMPLETED (exit 0:0), $(basename "$(latest_checkpoint "$run_dir")") at step $steps, 2 ranks"
}

case_train_requeue() {
  local steps=300 signal_after=40 run_dir=$JOB_DIR/run reference=$JOB_DIR/reference args
  # The reference first, outside SLURM, so the two runs never share the cores.
  train_args "$reference" "$steps"
  MPICNN_BIN=$mpicnn run_bounded 90 "$JOB_DIR/reference.log" \
    bash "$repo_root/scripts/slurm/launch.sh" -np 2 --threads 1 -- train --config "${args[0]}" --output "${args[@]:1}" ||
    { tail -n 30 "$JOB_DIR/reference.log" >&2; fail "the uninterrupted reference run (launch.sh, mpirun) failed"; }
  local reference_checkpoint
  reference_checkpoint=$(latest_checkpoint "$reference")
  expect_checkpoint_at "$reference_checkpoint" "$steps"

  cluster_up
  submit_training "$run_dir" "$steps"
  wait_for "job $JOB_ID to take $signal_after steps" 60 steps_taken_at_least "$run_dir" "$signal_after"
  scancel --batch --signal=USR1 "$JOB_ID" || fail "scancel --batch --signal=USR1 $JOB_ID failed"
  wait_for_job "$JOB_ID" 100
  [[ "$JOB_STATE" == COMPLETED && "$JOB_EXIT" == 0:0 ]] ||
    fail "job $JOB_ID ended $JOB_STATE (exit $JOB_EXIT), expected COMPLETED (exit 0:0)"
  [[ "$JOB_RESTARTS" == 1 ]] || fail "job $JOB_ID restarted $JOB_RESTARTS times, expected 1"

  local out=$JOB_STDOUT stopped_at
  expect_line "$out" 'received SIGUSR1'
  expect_line "$out" 'forwarded SIGUSR1 to the ranks'
  expect_line "$out" 'stop requested by a signal: checkpointing at global step [0-9]+'
  stopped_at=$(grep -oE 'checkpointing at global step [0-9]+' "$out" | head -n 1 | grep -oE '[0-9]+$')
  ((stopped_at >= signal_after && stopped_at < steps)) ||
    fail "the signal stopped training at global step $stopped_at, expected mid-run ($signal_after..$((steps - 1)))"
  expect_line "$out" 'training exited with status 75'
  expect_line "$out" "requeueing job $JOB_ID"
  expect_line "$out" 'run 2 \(SLURM_RESTART_COUNT=1\)'
  local checkpoint_name
  checkpoint_name=$(printf 'ckpt-%09d.h5' "$stopped_at")
  expect_line "$out" "^resuming from .*/$checkpoint_name: .*\(global step $stopped_at\)"
  # Resumed once, by the second run, which then finished.
  local restart_line resume_line done_line
  [[ "$(grep -c '^resuming from' "$out")" == 1 ]] || fail "'resuming from' is not printed exactly once in $out"
  restart_line=$(grep -n 'SLURM_RESTART_COUNT=1' "$out" | head -n 1 | cut -d: -f1)
  resume_line=$(grep -n '^resuming from' "$out" | cut -d: -f1)
  done_line=$(grep -n 'training exited with status 0' "$out" | tail -n 1 | cut -d: -f1)
  ((restart_line < resume_line && resume_line < done_line)) ||
    fail "expected 'SLURM_RESTART_COUNT=1', 'resuming from', 'status 0' in that order in $out"
  expect_line "$out" "reached train.max_steps = $steps"

  local final comparison
  final=$(latest_checkpoint "$run_dir")
  expect_checkpoint_at "$final" "$steps"
  comparison=$("$python" "$tests_dir/compare_checkpoints.py" "$reference_checkpoint" "$final" model optimizer 2>&1) ||
    { echo "$comparison" >&2; fail "weights after the requeue differ from the uninterrupted run"; }
  log "train_requeue: stopped at step $stopped_at by USR1, requeued, resumed (SLURM_RESTART_COUNT=1) to step $steps; vs uninterrupted mpirun run: $comparison"
}

all_cases=(hello requeue requeue_mpirun timelimit cancel term launch train train_requeue)
deadline=
while (($#)); do
  case "$1" in
    --mpicnn) (($# >= 2)) || { echo "$0: --mpicnn needs a path" >&2; exit 2; }; mpicnn=$2; shift 2 ;;
    --deadline) (($# >= 2)) || { echo "$0: --deadline needs seconds" >&2; exit 2; }; deadline=$2; shift 2 ;;
    *) break ;;
  esac
done
(($#)) || { echo "usage: $0 [--mpicnn PATH] [--deadline SECONDS] CASE... (${all_cases[*]}, all)" >&2; exit 2; }
cases=("$@")
[[ "${cases[*]}" == all ]] && cases=("${all_cases[@]}")
need_probe=0
need_mpicnn=0
for c in "${cases[@]}"; do
  declare -F "case_$c" >/dev/null || { echo "unknown case '$c' (known: ${all_cases[*]}, all)" >&2; exit 2; }
  if [[ "$c" == train* ]]; then need_mpicnn=1; else need_probe=1; fi
done

check_prerequisites
harness_init
[[ -z "$deadline" ]] || start_watchdog "$deadline"
((need_probe)) && compile_probe
for c in "${cases[@]}"; do
  started=$SECONDS
  log "case $c"
  use_job_dir "$c"
  "case_$c"
  cluster_down
  log "case $c passed in $((SECONDS - started))s"
done
