#!/bin/sh
# Stands in for ssh when a test runs a job on two "nodes" of this machine: mpirun starts its
# daemon on each host of the hostfile through this agent, which drops ssh's options and the host
# name and runs the daemon here. Each daemon is a node of its own to Open MPI, so the job has
# ranks on different nodes (MPI_COMM_TYPE_SHARED splits them) on one machine. Each node gets its
# own session directory, as on separate machines: two daemons sharing one race on the hwloc
# topology file they both write there (an orted segfault, about 1 start in 20).
while [ $# -gt 0 ]; do
  case "$1" in
    -*) shift ;;
    *) break ;;
  esac
done
host=$1
shift
OMPI_MCA_orte_tmpdir_base="${TMPDIR:-/tmp}/mpicnn-node-$host"
mkdir -p "$OMPI_MCA_orte_tmpdir_base"
export OMPI_MCA_orte_tmpdir_base
exec /bin/sh -c "$*"
