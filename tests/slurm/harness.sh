# shellcheck shell=bash disable=SC2034  # JOB_* and SBATCH_OPTS are for the sourcing script
# Functions for tests that run jobs on a throw-away local SLURM cluster (scripts/slurm/local_cluster.sh).
# Sourced by run_slurm_test.sh. Every wait is bounded and dumps the job output and daemon logs when it
# runs out.
#
#   harness_init                   makes WORK_DIR and the EXIT handler (cluster_up calls it)
#   use_job_dir NAME               jobs run in (and write their output to) WORK_DIR/NAME from now on
#   cluster_up                     start a cluster in a fresh state dir; exports SLURM_CONF; torn
#                                  down on EXIT whatever happens
#   submit JOBSCRIPT [ARGS...]     sbatch (extra sbatch options via the SBATCH_OPTS array); sets JOB_ID
#   wait_for_job JOB_ID [SECONDS]  waits for a final state; sets JOB_STATE, JOB_RESTARTS, JOB_EXIT
#   submit_and_wait JOBSCRIPT ...  both, and fails unless the job COMPLETED
#   wait_for WHAT SECONDS CMD...   polls CMD until it succeeds
#   cluster_down                   stops the cluster (safe to call twice)
#   start_watchdog SECONDS         SIGTERM to this script after SECONDS, so the EXIT handler still runs
#   run_bounded SECONDS LOG CMD... runs CMD (output to LOG) for at most SECONDS; ended on exit too
#
# A requeued job waits for the cluster's cred_expire (10 s in local_cluster.sh, 120 s by default in
# SLURM) before it may start again. Releasing it sooner (scontrol update StartTime=now) is no shortcut:
# slurmd still holds the revoked credential and kills the new run ("Job credential revoked").

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
local_cluster=$repo_root/scripts/slurm/local_cluster.sh
STATE_DIR=
WORK_DIR=
JOB_DIR=
SBATCH_OPTS=()
JOB_ID=
JOB_STATE=
JOB_RESTARTS=
JOB_EXIT=
JOB_STDOUT=
BOUNDED_PID=
WATCHDOG_PID=

log() { echo "[slurm-test $(date +%T)] $*"; }

fail() {
  log "FAIL: $*" >&2
  dump_diagnostics >&2
  exit 1
}

dump_diagnostics() {
  local f
  if [[ -n "${JOB_ID:-}" ]] && [[ -n "${SLURM_CONF:-}" ]]; then
    echo "----- scontrol show job $JOB_ID -----"
    scontrol show job "$JOB_ID" 2>&1 | head -n 40
  fi
  if [[ -n "$JOB_DIR" ]]; then
    for f in "$JOB_DIR"/*.out; do
      [[ -e "$f" ]] || continue
      echo "----- $f -----"
      tail -n 60 "$f"
    done
  fi
  if [[ -n "$STATE_DIR" ]]; then
    for f in "$STATE_DIR"/log/*.log; do
      [[ -e "$f" ]] || continue
      echo "----- $f (last 30 lines) -----"
      tail -n 30 "$f"
    done
  fi
}

wait_for() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out after ${seconds}s waiting for $what"
    sleep 0.2
  done
}

# Makes WORK_DIR (job scripts' working directory) and the EXIT handler: cluster down, and WORK_DIR
# removed after a pass (kept for a look after a failure, or with KEEP_SLURM_TEST=1).
harness_init() {
  WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/mpicnn-slurm-work.XXXXXX")
  chmod 0755 "$WORK_DIR"
  trap harness_exit EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

harness_exit() {
  local status=$?
  if [[ -n "$BOUNDED_PID" ]]; then
    kill -TERM "$BOUNDED_PID" 2>/dev/null || true
    wait "$BOUNDED_PID" 2>/dev/null || true
  fi
  [[ -z "$WATCHDOG_PID" ]] || kill -TERM "$WATCHDOG_PID" 2>/dev/null || true
  cluster_down
  if [[ -n "$WORK_DIR" ]]; then
    if ((status == 0)) && [[ -z "${KEEP_SLURM_TEST:-}" ]]; then
      rm -rf -- "$WORK_DIR"
    else
      log "kept $WORK_DIR" >&2
    fi
  fi
  return "$status"
}

# CTest ends a test that overruns its TIMEOUT with SIGKILL, which would leave the cluster's daemons (and
# a job holding both cores) running; a TERM before that runs the EXIT handler. The check every second
# keeps the watchdog's last sleep short once it is ended.
start_watchdog() {
  local seconds=$1 main=$$
  (
    trap - EXIT HUP INT TERM
    deadline=$((SECONDS + seconds))
    while ((SECONDS < deadline)); do sleep 1; done
    log "deadline: still running after ${seconds}s, stopping" >&2
    kill -TERM "$main"
  ) </dev/null &
  WATCHDOG_PID=$!
}

# In the background with `wait`, so that a TERM is handled at once rather than when CMD ends.
run_bounded() {
  local seconds=$1 output=$2 status=0
  shift 2
  timeout "$seconds" "$@" >"$output" 2>&1 &
  BOUNDED_PID=$!
  wait "$BOUNDED_PID" || status=$?
  BOUNDED_PID=
  return "$status"
}

use_job_dir() {
  JOB_DIR=$WORK_DIR/$1
  mkdir -p "$JOB_DIR"
}

cluster_up() {
  [[ -n "$WORK_DIR" ]] || harness_init
  STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/mpicnn-slurm-test.XXXXXX")
  local out
  out=$(bash "$local_cluster" start "$STATE_DIR" 2>&1) || { echo "$out" >&2; fail "cluster did not start"; }
  echo "$out"
  export SLURM_CONF=$STATE_DIR/slurm.conf
}

cluster_down() {
  if [[ -n "$STATE_DIR" ]]; then
    # Stopping removes the logs: fail() has printed them already.
    bash "$local_cluster" stop "$STATE_DIR" >/dev/null 2>&1 ||
      log "warning: stopping the cluster in $STATE_DIR failed" >&2
    STATE_DIR=
  fi
}

# Reads the job's record into JOB_STATE, JOB_RESTARTS, JOB_EXIT and JOB_STDOUT (its output file).
read_job() {
  local record
  record=$(scontrol -o show job "$1" 2>/dev/null) || return 1
  JOB_STATE=$(grep -o 'JobState=[^ ]*' <<<"$record" | cut -d= -f2)
  JOB_RESTARTS=$(grep -o 'Restarts=[^ ]*' <<<"$record" | cut -d= -f2)
  JOB_EXIT=$(grep -o ' ExitCode=[^ ]*' <<<"$record" | cut -d= -f2)
  JOB_STDOUT=$(grep -o 'StdOut=[^ ]*' <<<"$record" | cut -d= -f2)
}

submit() {
  local script=$1
  shift
  [[ -n "$JOB_DIR" ]] || use_job_dir jobs
  JOB_ID=$(sbatch --parsable --chdir="$JOB_DIR" "${SBATCH_OPTS[@]}" "$script" "$@") ||
    fail "sbatch $script failed"
  JOB_ID=${JOB_ID%%;*}
  log "submitted $(basename "$script") as job $JOB_ID"
}

wait_for_job() {
  local job=$1 seconds=${2:-60}
  local deadline=$((SECONDS + seconds)) started=$SECONDS
  while :; do
    if read_job "$job"; then
      case "$JOB_STATE" in
        COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
          log "job $job $JOB_STATE (exit $JOB_EXIT, restarts $JOB_RESTARTS) after $((SECONDS - started))s"
          return 0
          ;;
      esac
    fi
    ((SECONDS < deadline)) || fail "job $job not finished after ${seconds}s (state ${JOB_STATE:-unknown})"
    sleep 0.2
  done
}

submit_and_wait() {
  submit "$@"
  wait_for_job "$JOB_ID" "${SUBMIT_TIMEOUT:-60}"
  [[ "$JOB_STATE" == COMPLETED ]] || fail "job $JOB_ID ended $JOB_STATE (exit $JOB_EXIT), expected COMPLETED"
}

# Fails unless FILE contains a line matching the extended regex.
expect_line() {
  local file=$1 pattern=$2
  [[ -r "$file" ]] || fail "$file missing (expected a line matching '$pattern')"
  grep -qE -- "$pattern" "$file" || fail "$file has no line matching '$pattern'"
}
