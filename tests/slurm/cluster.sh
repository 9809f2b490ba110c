#!/usr/bin/env bash
# A single-node SLURM on localhost for the tests: munged, slurmctld and slurmd from Debian's
# packages, no systemd. Needs root (to install the packages and start the daemons).
# It writes /etc/slurm/slurm.conf (job steps inside a batch job read that path), marked as its
# own, and refuses to start where a slurm.conf that is not its own exists; `stop` removes it.
# It writes a munge key only when the package left none. The node declares two GPUs through gres
# (/etc/slurm/gres.conf, also marked and removed): character devices with /dev/null's numbers
# under $LCSC_SLURM_STATE/gpus stand in for the device files, so SLURM hands them out and sets
# CUDA_VISIBLE_DEVICES in the jobs that ask for them.
#
#   tests/slurm/cluster.sh start   install if needed, start with a clean state, wait until idle
#   tests/slurm/cluster.sh stop    cancel its jobs, stop the daemons this script started (PID files)
#
# State, logs, config and PID files live in $LCSC_SLURM_STATE (default /tmp/lcsc-slurm, which must
# be root's). Exit codes: 0 done; 3 SLURM cannot run here (not root, or no packages); 1 it failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${LCSC_SLURM_STATE:-/tmp/lcsc-slurm}
conf=/etc/slurm/slurm.conf
gres_conf=/etc/slurm/gres.conf
marker="# lcsc test cluster (tests/slurm/cluster.sh)"

fail() { echo "cluster.sh: $*" >&2; exit 1; }

have_slurm() {
    for bin in munged slurmctld slurmd sbatch squeue sinfo scancel; do
        command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || return 1
    done
}

install_slurm() {
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client >"$state/apt.log" 2>&1; then
        apt-get update -q >>"$state/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client >>"$state/apt.log" 2>&1 || {
            echo "cluster.sh: apt-get could not install SLURM (see $state/apt.log)" >&2
            exit 3
        }
    fi
}

# a PID file's process, if it still runs the program it names
alive() {
    local pidfile=$1 name=$2 pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]
}

stop_pidfile() {
    local pidfile=$1 name=$2 pid
    if alive "$pidfile" "$name"; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

wait_idle() {
    for _ in $(seq 1 60); do
        if [ "$(timeout 5 sinfo -h -N -o %T 2>/dev/null | head -1)" = "idle" ]; then
            return 0
        fi
        sleep 1
    done
    timeout 5 sinfo -N -l >&2 || true
    fail "the node did not become idle; logs in $state"
}

case "${1:-start}" in
start)
    [ "$(id -u)" = 0 ] || { echo "cluster.sh: needs root (to install SLURM and start its daemons)" >&2; exit 3; }
    mkdir -p "$state"
    [ "$(stat -c %u "$state")" = 0 ] || fail "$state is not owned by root; set LCSC_SLURM_STATE to another folder"
    if alive "$state/slurmctld.pid" slurmctld && alive "$state/slurmd.pid" slurmd; then
        wait_idle
        echo "SLURM already up: $(timeout 5 sinfo -h -N -o '%N %T %c CPUs %m MB')"
        exit 0
    fi
    for f in "$conf" "$gres_conf"; do
        if [ -e "$f" ] && ! head -1 "$f" | grep -qF "$marker"; then
            echo "cluster.sh: $f exists and is not this script's; refusing to replace a real SLURM config" >&2
            exit 3
        fi
    done
    have_slurm || install_slurm
    id slurm >/dev/null 2>&1 || fail "no 'slurm' user after installing the packages"
    mkdir -p "$state/slurmctld" "$state/slurmd" /run/munge
    chown -R slurm:slurm "$state/slurmctld"
    chown munge:munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    # the node as slurmd sees it, renamed localhost, with 1 GB of memory left to the system
    node=$(/usr/sbin/slurmd -C | head -1 | sed -E 's/NodeName=[^ ]+/NodeName=localhost/; s/RealMemory=[0-9]+//') \
        || fail "slurmd -C could not describe this node"
    mem=$(( $(free -m | awk '/^Mem:/ {print $2}') - 1024 ))
    mkdir -p /etc/slurm "$state/gpus"
    for i in 0 1; do  # slurmd wants character devices: nodes with /dev/null's numbers, else links to it
        rm -f "$state/gpus/nvidia$i"
        mknod "$state/gpus/nvidia$i" c 1 3 2>/dev/null || ln -s /dev/null "$state/gpus/nvidia$i"
    done
    { echo "$marker"; sed -e "s|@NODE@|$node RealMemory=$mem Gres=gpu:2 State=UNKNOWN|" -e "s|@STATE@|$state|g" \
        "$here/slurm.conf.in"; } >"$conf"
    { echo "$marker"; echo "NodeName=localhost Name=gpu File=$state/gpus/nvidia[0-1]"; } >"$gres_conf"
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/lcsc-munged.pid || fail "munged did not start"
        munge -n | unmunge >/dev/null || fail "munge does not work after starting munged"
    fi
    /usr/sbin/slurmctld -c || fail "slurmctld did not start; see $state/slurmctld.log"
    /usr/sbin/slurmd -N localhost || fail "slurmd did not start; see $state/slurmd.log"
    wait_idle
    echo "SLURM is up: $(timeout 5 sinfo -h -N -o '%N %T %c CPUs %m MB')"
    ;;
stop)
    if alive "$state/slurmctld.pid" slurmctld; then
        timeout 10 scancel --full --user="$(id -un)" 2>/dev/null || true
        timeout 10 squeue -h -o %i 2>/dev/null | xargs -r timeout 10 scancel 2>/dev/null || true
    fi
    stop_pidfile "$state/slurmd.pid" slurmd
    stop_pidfile "$state/slurmctld.pid" slurmctld
    stop_pidfile /run/munge/lcsc-munged.pid munged  # munged runs as munge: its PID file lives in /run/munge
    for f in "$conf" "$gres_conf"; do
        if [ -e "$f" ] && head -1 "$f" | grep -qF "$marker"; then
            rm -f "$f"
        fi
    done
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
