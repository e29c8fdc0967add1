#!/usr/bin/env bash
# Launches mpicnn with plain mpirun, on this machine or on the hosts of a hostfile (no SLURM needed).
#
#   scripts/slurm/launch.sh -np N [--hostfile F] [--threads T] [--dry-run] [mpirun options] -- <mpicnn args>
#   scripts/slurm/launch.sh -np 2 -- train --config configs/fashion_mnist.ini --output runs/fm
#
# Binding: ranks that run several threads each get --bind-to none (a rank bound to one core would
# squeeze all its threads onto it), and so do more ranks than cores; otherwise --bind-to core. Threads per rank: --threads,
# else $MPICNN_THREADS, else this machine's cores divided by the ranks per host (hostfile hosts are
# assumed to look like this one). The value is exported to the ranks as MPICNN_THREADS.
# Without a hostfile, more ranks than cores adds --oversubscribe. As root, the two OMPI_ALLOW_RUN_AS_ROOT
# variables are set (mpirun refuses root otherwise). Options it does not know go to mpirun unchanged.
# MPICNN_BIN overrides the executable (default: build/mpicnn of this repository).
# mpirun runs with -q, so an error every rank meets prints mpicnn's one line and no mpirun note; a
# rank killed by a signal, which -q would leave silent, is named here from mpirun's exit status.
set -euo pipefail

die() { echo "launch.sh: error: $*" >&2; exit 2; }
usage() {
  sed -n '4,5p' "$0" | sed 's/^# *//' >&2
  exit 2
}

repo_root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${MPICNN_BIN:-$repo_root/build/mpicnn}
ranks=
hostfile=
threads=${MPICNN_THREADS:-}
dry_run=0
mpirun_opts=()

while (($#)); do
  case "$1" in
    -np | -n | --np) (($# >= 2)) || usage; ranks=$2; shift 2 ;;
    --hostfile | -hostfile | --machinefile) (($# >= 2)) || usage; hostfile=$2; shift 2 ;;
    --threads) (($# >= 2)) || usage; threads=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage ;;
    --) shift; break ;;
    *) mpirun_opts+=("$1"); shift ;;
  esac
done
app_args=("$@")

[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || die "-np needs a positive number of ranks (got '${ranks}')"
((${#app_args[@]})) || die "nothing to run: give the mpicnn arguments after --, e.g. -- train --config FILE --output DIR"
[[ -x "$bin" ]] || die "mpicnn executable '$bin' not found: build it (scripts/setup.sh) or set MPICNN_BIN"

cores=$(nproc)
hosts=1
if [[ -n "$hostfile" ]]; then
  [[ -r "$hostfile" ]] || die "hostfile '$hostfile' is not readable"
  hosts=$(grep -cvE '^[[:space:]]*(#|$)' "$hostfile" || true)
  ((hosts > 0)) || die "hostfile '$hostfile' lists no host"
fi
ranks_per_host=$(((ranks + hosts - 1) / hosts))
if [[ -z "$threads" ]]; then
  threads=$((cores / ranks_per_host))
  ((threads >= 1)) || threads=1
fi
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads needs a positive number (got '$threads')"

# More ranks than cores cannot bind one rank per core either.
if ((threads > 1 || ranks_per_host > cores)); then bind=none; else bind=core; fi
cmd=(mpirun -q -np "$ranks" --bind-to "$bind" -x MPICNN_THREADS)
[[ -n "$hostfile" ]] && cmd+=(--hostfile "$hostfile")
if [[ -z "$hostfile" ]] && ((ranks > cores)); then cmd+=(--oversubscribe); fi
cmd+=("${mpirun_opts[@]}" "$bin" "${app_args[@]}")

export MPICNN_THREADS=$threads
if ((EUID == 0)); then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
echo "launch.sh: $ranks ranks x $threads threads: ${cmd[*]}" >&2
((dry_run)) && exit 0

# mpirun in the background so that its status can be explained; the signals a user or SLURM sends
# (Ctrl-C, preemption's SIGTERM/SIGUSR1) go on to it, as they would with exec.
set -m  # without job control a background command ignores SIGINT
"${cmd[@]}" &
mpirun_pid=$!
for signal in INT TERM HUP USR1 USR2; do trap "kill -$signal $mpirun_pid 2>/dev/null" "$signal"; done
status=0
while :; do
  wait "$mpirun_pid" && status=0 || status=$?
  kill -0 "$mpirun_pid" 2>/dev/null || break  # wait returned for a trapped signal: mpirun still runs
done
if ((status > 128)); then
  echo "launch.sh: error: a rank ended on signal $((status - 128)) ($(kill -l $((status - 128)) 2>/dev/null || echo '?'))" \
       "(mpirun exit status $status)" >&2
fi
exit "$status"
