#!/usr/bin/env bash
# A single-node SLURM on localhost for the tests: munged, slurmctld and slurmd from Debian's
# packages, no systemd. Needs root (to install the packages and start the daemons).
#
#   tests/slurm/cluster.sh start   install if needed, start, wait until the node is idle
#   tests/slurm/cluster.sh stop    stop the daemons this script started (by their PID files)
#
# State, logs and PID files live in $LCSC_SLURM_STATE (default /tmp/lcsc-slurm).
# Exit codes: 0 up / stopped; 3 SLURM cannot run here (not root, or the packages cannot be installed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${LCSC_SLURM_STATE:-/tmp/lcsc-slurm}
conf=/etc/slurm/slurm.conf

have_slurm() {
    for bin in munged slurmctld slurmd sbatch squeue sinfo scancel; do
        command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || return 1
    done
}

install_slurm() {
    if [ "$(id -u)" != 0 ]; then
        echo "cluster.sh: SLURM is not installed and installing it needs root" >&2
        exit 3
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client >"$state/apt.log" 2>&1; then
        apt-get update -q >>"$state/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client >>"$state/apt.log" 2>&1 || {
            echo "cluster.sh: apt-get could not install SLURM (see $state/apt.log)" >&2
            exit 3
        }
    fi
}

wait_idle() {
    for _ in $(seq 1 60); do
        if [ "$(timeout 5 sinfo -h -N -o %T 2>/dev/null | head -1)" = "idle" ]; then
            return 0
        fi
        sleep 1
    done
    echo "cluster.sh: the node did not become idle; logs in $state" >&2
    timeout 5 sinfo -N -l >&2 || true
    exit 1
}

stop_pidfile() {
    local pidfile=$1
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

case "${1:-start}" in
start)
    mkdir -p "$state"
    if command -v sinfo >/dev/null 2>&1 && [ "$(timeout 5 sinfo -h -N -o %T 2>/dev/null | head -1)" = "idle" ]; then
        echo "SLURM already up: $(timeout 5 sinfo -h -N -o '%N %T %c CPUs %m MB')"
        exit 0
    fi
    have_slurm || install_slurm
    [ "$(id -u)" = 0 ] || { echo "cluster.sh: starting the SLURM daemons needs root" >&2; exit 3; }
    mkdir -p "$state/slurmctld" "$state/slurmd" /run/munge /etc/slurm
    chown -R slurm:slurm "$state/slurmctld"
    chown munge:munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    # the node as slurmd sees it, renamed localhost, with 1 GB of memory left to the system
    node=$(/usr/sbin/slurmd -C | head -1 | sed -E 's/NodeName=[^ ]+/NodeName=localhost/; s/RealMemory=[0-9]+//')
    mem=$(( $(free -m | awk '/^Mem:/ {print $2}') - 1024 ))
    sed -e "s|@NODE@|$node RealMemory=$mem State=UNKNOWN|" -e "s|@STATE@|$state|g" "$here/slurm.conf.in" >"$conf"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid 2>/dev/null || true
    cp /run/munge/munged.pid "$state/munged.pid" 2>/dev/null || true
    /usr/sbin/slurmctld
    /usr/sbin/slurmd -N localhost
    wait_idle
    echo "SLURM is up: $(timeout 5 sinfo -h -N -o '%N %T %c CPUs %m MB')"
    ;;
stop)
    stop_pidfile "$state/slurmd.pid"
    stop_pidfile "$state/slurmctld.pid"
    stop_pidfile "$state/munged.pid"
    rm -f /run/munge/munged.pid
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
