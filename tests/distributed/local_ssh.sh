#!/bin/sh
# Stands in for ssh when a test runs a job on two "nodes" of this machine: mpirun starts its
# daemon on each host of the hostfile through this agent, which drops ssh's options and the host
# name and runs the daemon here. Each daemon is a node of its own to Open MPI, so the job has
# ranks on different nodes (MPI_COMM_TYPE_SHARED splits them) on one machine.
while [ $# -gt 0 ]; do
  case "$1" in
    -*) shift ;;
    *) break ;;
  esac
done
shift  # the host
exec /bin/sh -c "$*"
