#!/usr/bin/env bash
# A real single-node SLURM cluster on loopback, for tests and demos. Needs root (slurmd launches jobs
# as their owner, munged must be started as the munge user).
#
#   scripts/slurm/local_cluster.sh start  [STATE_DIR]   # munged + slurmctld + slurmd, waits for idle
#   scripts/slurm/local_cluster.sh status [STATE_DIR]   # exit 0 when all three daemons run
#   scripts/slurm/local_cluster.sh stop   [STATE_DIR]   # cancels jobs, kills daemons, removes STATE_DIR
#
# STATE_DIR defaults to $MPICNN_SLURM_STATE_DIR or /tmp/mpicnn-slurm-<uid>. Everything the cluster
# writes (munge key and socket, slurm.conf, state, spool, pid and log files) lives there, so it never
# touches /etc/slurm, /etc/munge or a system munged. Ports: $MPICNN_SLURM_PORT (slurmctld; slurmd
# uses the next one) or the first free pair from 6817 up, so two clusters can run side by side.
# Waits are bounded by $MPICNN_SLURM_TIMEOUT seconds (default 30). A requeued job may start again
# after $MPICNN_SLURM_CRED_EXPIRE seconds (default 10; SLURM's own default is 120).
set -euo pipefail

readonly MARKER=.mpicnn-local-cluster
readonly TIMEOUT=${MPICNN_SLURM_TIMEOUT:-30}

die() { echo "local_cluster: error: $*" >&2; exit 1; }
say() { echo "local_cluster: $*"; }

usage() {
  echo "usage: $0 start|stop|status [STATE_DIR]" >&2
  exit 2
}

(($# >= 1 && $# <= 2)) || usage
action=$1
state_dir=${2:-${MPICNN_SLURM_STATE_DIR:-/tmp/mpicnn-slurm-$(id -u)}}
state_dir=$(realpath -m -- "$state_dir")
[[ "$state_dir" != / ]] || die "refusing to use / as the state directory"

conf=$state_dir/slurm.conf
munge_dir=$state_dir/munge
munge_socket=$munge_dir/munge.socket
run_dir=$state_dir/run
log_dir=$state_dir/log
daemons=(slurmd slurmctld munged)   # stop order

pid_file() { echo "$run_dir/$1.pid"; }
elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# A zombie has finished: only its parent's wait is missing (an orphan waits for pid 1 to reap it).
is_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ "${stat%% *}" != Z ]]
}

# Prints the pid of daemon $1 when its pid file names a live process of that name (guards against a
# recycled pid), else fails.
daemon_pid() {
  local file pid
  file=$(pid_file "$1")
  [[ -r "$file" ]] || return 1
  read -r pid <"$file" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] || return 1
  is_alive "$pid" || return 1
  echo "$pid"
}

running_count() {
  local n=0 d
  for d in "${daemons[@]}"; do daemon_pid "$d" >/dev/null && n=$((n + 1)); done
  echo "$n"
}

print_logs() {
  local f
  for f in "$log_dir"/*.log; do
    [[ -e "$f" ]] || continue
    echo "----- $f (last 40 lines) -----" >&2
    tail -n 40 "$f" >&2
  done
}

port_in_use() {
  if command -v ss >/dev/null; then
    [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

pick_ports() {
  if [[ -n "${MPICNN_SLURM_PORT:-}" ]]; then
    echo "$MPICNN_SLURM_PORT"
    return
  fi
  local p
  for ((p = 6817; p < 6917; p += 2)); do
    port_in_use "$p" || port_in_use $((p + 1)) || { echo "$p"; return; }
  done
  die "no free port pair between 6817 and 6917; set MPICNN_SLURM_PORT"
}

# Processes left over from this cluster after its daemons are gone: slurmstepd (inherits the marker
# variable from slurmd) and job processes (carry this cluster's SLURM_CONF and a SLURM_JOB_ID). Never
# this script or its ancestors.
leftover_pids() {
  local keep=" " p=$$ env_file pid
  while [[ "$p" =~ ^[0-9]+$ ]] && ((p > 1)); do
    keep+="$p "
    p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null) || break
  done
  for env_file in /proc/[0-9]*/environ; do
    pid=${env_file#/proc/}
    pid=${pid%/environ}
    [[ "$keep" == *" $pid "* ]] && continue
    # Kernel threads and processes of other namespaces cannot be read: they are not ours.
    if grep -qzxF "MPICNN_LOCAL_CLUSTER=$state_dir" "$env_file" 2>/dev/null ||
       { grep -qzxF "SLURM_CONF=$conf" "$env_file" 2>/dev/null &&
         grep -qz '^SLURM_JOB_ID=' "$env_file" 2>/dev/null; }; then
      echo "$pid"
    fi
  done
}

# Sends TERM to the given pids, waits up to $1 seconds, then KILLs what is left.
terminate() {
  local grace=$1 pid deadline
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  deadline=$((SECONDS + grace))
  while ((SECONDS < deadline)); do
    local alive=0
    for pid in "$@"; do is_alive "$pid" && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
  # Give pid 1 a moment to reap them, so that pgrep afterwards shows no <defunct> daemons.
  deadline=$((SECONDS + 3))
  for pid in "$@"; do
    while [[ -e "/proc/$pid" ]] && ((SECONDS < deadline)); do sleep 0.1; done
  done
}

cmd_status() {
  if [[ ! -e "$state_dir/$MARKER" ]]; then
    say "no cluster in $state_dir"
    return 3
  fi
  local d pid n=0
  for d in munged slurmctld slurmd; do
    if pid=$(daemon_pid "$d"); then
      say "$d running (pid $pid)"
      n=$((n + 1))
    else
      say "$d not running"
    fi
  done
  if ((n == 3)); then
    SLURM_CONF=$conf sinfo -N -o '%N %P %T %c %m' 2>&1 | sed 's/^/  /' || true
    echo "export SLURM_CONF=$conf"
    return 0
  fi
  return 1
}

cmd_stop() {
  if [[ ! -d "$state_dir" ]]; then
    say "nothing to stop in $state_dir"
    return 0
  fi
  [[ -e "$state_dir/$MARKER" ]] ||
    die "$state_dir was not made by this script (no $MARKER); not touching it"

  # Cancel jobs while the controller still runs, so slurmstepd ends their processes cleanly.
  if daemon_pid slurmctld >/dev/null && daemon_pid slurmd >/dev/null; then
    local jobs deadline
    jobs=$(SLURM_CONF=$conf timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [[ -n "$jobs" ]]; then
      # shellcheck disable=SC2086
      SLURM_CONF=$conf timeout 10 scancel $jobs 2>/dev/null || true
      # Jobs that ignore SIGTERM get SIGKILL after KillWait (10 s).
      deadline=$((SECONDS + 15))
      while ((SECONDS < deadline)) &&
            [[ -n "$(SLURM_CONF=$conf timeout 10 squeue -h -o %i 2>/dev/null || true)" ]]; do
        sleep 0.2
      done
    fi
  fi

  # Each daemon takes 1-2 s to exit after SIGTERM: stop them together.
  local d pid pids=() names=()
  for d in "${daemons[@]}"; do
    if pid=$(daemon_pid "$d"); then
      pids+=("$pid")
      names+=("$d ($pid)")
    fi
  done
  if ((${#pids[@]})); then
    terminate 10 "${pids[@]}"
    say "stopped ${names[*]}"
  fi
  local left
  left=$(leftover_pids)
  if [[ -n "$left" ]]; then
    say "killing leftover processes: $(tr '\n' ' ' <<<"$left")"
    # shellcheck disable=SC2086
    terminate 5 $left
  fi
  rm -rf -- "$state_dir"
  say "removed $state_dir"
}

write_conf() {
  local ctld_port=$1 node hw
  # cred_expire is also how long SLURM holds a requeued job before it may start again (default 120 s).
  local cred_expire=${MPICNN_SLURM_CRED_EXPIRE:-10}
  # "NodeName=host CPUs=2 Boards=1 ... RealMemory=24105" then "UpTime=..."; keep the hardware fields.
  hw=$(slurmd -C | head -n 1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' ')
  [[ "$hw" == *CPUs=* ]] || die "could not read the node's hardware from 'slurmd -C'"
  node="NodeName=localhost NodeAddr=127.0.0.1 ${hw}State=UNKNOWN"
  : >"$state_dir/plugstack.conf"
  # The pmix plugin makes spmix_appdir_<uid>_<job>.<step> under /tmp by default and leaves it behind
  # when a step is cancelled; job ids restart at 1 in every new cluster, so the next cluster's step
  # 1.0 would fail on "File exists". Keep those directories in the state dir.
  mkdir -p "$state_dir/pmix"
  chmod 1777 "$state_dir/pmix"
  echo "PMIxCliTmpDirBase=$state_dir/pmix" >"$state_dir/mpi.conf"
  cat >"$conf" <<CONF
# Written by scripts/slurm/local_cluster.sh for a single-node cluster on loopback.
ClusterName=mpicnn-local
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$((ctld_port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$munge_socket,cred_expire=$cred_expire
StateSaveLocation=$state_dir/slurmctld
SlurmdSpoolDir=$state_dir/slurmd
SlurmctldPidFile=$(pid_file slurmctld)
SlurmdPidFile=$(pid_file slurmd)
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
PlugStackConfig=$state_dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
EnforcePartLimits=ALL
MailProg=/bin/true
ReturnToService=2
# Short grace between SIGTERM and SIGKILL, and quick rescheduling, keep tests fast.
KillWait=10
SchedulerParameters=sched_interval=1
MinJobAge=600
InactiveLimit=0
SlurmctldDebug=info
SlurmdDebug=info
$node
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munged() {
  mkdir -p "$munge_dir"
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$munge_dir/munge.key" >/dev/null
  else
    dd if=/dev/urandom of="$munge_dir/munge.key" bs=1024 count=1 status=none
  fi
  # munged checks ownership and modes: key 0400, its directory not writable by others; 0755 so
  # non-root users can reach the socket too.
  chown -R munge:munge "$munge_dir"
  chmod 0755 "$munge_dir"
  chmod 0400 "$munge_dir/munge.key"
  # munged writes its pid file itself, as the munge user, so it goes into the munge directory.
  runuser -u munge -- env MPICNN_LOCAL_CLUSTER="$state_dir" munged \
    --key-file="$munge_dir/munge.key" --socket="$munge_socket" \
    --pid-file="$munge_dir/munged.pid" --log-file="$log_dir/munged.log" \
    --seed-file="$munge_dir/munged.seed" ||
    { print_logs; die "munged did not start"; }
  ln -sf "$munge_dir/munged.pid" "$(pid_file munged)"
  local deadline=$((SECONDS + TIMEOUT))
  until munge -n -S "$munge_socket" 2>/dev/null | unmunge -S "$munge_socket" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { print_logs; die "munged does not answer on $munge_socket after ${TIMEOUT}s"; }
    sleep 0.1
  done
}

cmd_start() {
  ((EUID == 0)) || die "must run as root (slurmd and munged need it)"
  local tool
  for tool in munged munge unmunge slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y slurm-wlm munge"
  done
  id munge >/dev/null 2>&1 || die "no 'munge' user: apt-get install -y munge"

  if [[ -e "$state_dir/$MARKER" ]]; then
    if (($(running_count) == 3)); then
      say "already running in $state_dir"
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    say "cleaning a stale cluster in $state_dir"
    cmd_stop >/dev/null
  elif [[ -e "$state_dir" && -n "$(ls -A "$state_dir")" ]]; then
    die "$state_dir exists, is not empty and was not made by this script"
  fi

  mkdir -p "$state_dir" "$run_dir" "$log_dir" "$state_dir/slurmctld" "$state_dir/slurmd"
  chmod 0755 "$state_dir"
  touch "$state_dir/$MARKER"
  # munged logs there as the munge user.
  chown munge:munge "$log_dir"

  local started=$EPOCHREALTIME port
  start_munged
  port=$(pick_ports)
  write_conf "$port"

  export SLURM_CONF=$conf
  env MPICNN_LOCAL_CLUSTER="$state_dir" slurmctld -f "$conf" ||
    { print_logs; die "slurmctld did not start"; }
  env MPICNN_LOCAL_CLUSTER="$state_dir" slurmd -f "$conf" -N localhost ||
    { print_logs; die "slurmd did not start"; }

  local launched=$SECONDS deadline=$((SECONDS + TIMEOUT)) node_state="" problem="" d
  while :; do
    node_state=$(timeout 5 sinfo -h -N -n localhost -o %T 2>/dev/null || true)
    [[ "$node_state" == idle ]] && break
    if ((SECONDS >= deadline)); then
      problem="node localhost is '${node_state:-not answering}' after ${TIMEOUT}s, not idle"
    elif ((SECONDS - launched >= 2)); then
      # Both daemons write their pid file at once; a missing one by now means a fatal error.
      for d in slurmctld slurmd; do
        daemon_pid "$d" >/dev/null || problem="$d exited during start-up"
      done
    fi
    if [[ -n "$problem" ]]; then
      print_logs
      cmd_stop >/dev/null 2>&1 || true
      die "$problem (logs above)"
    fi
    sleep 0.2
  done
  say "cluster up in $(elapsed_since "$started") s (state $state_dir, slurmctld port $port)"
  echo "export SLURM_CONF=$conf"
}

case "$action" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
esac
