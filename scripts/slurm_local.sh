#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests that submit jobs
# (tests/slurm_cluster.py skips them without a cluster, fails them under CI=true) and for CI
# (.ci/run). Needs root on Debian/Ubuntu; throwaway machines only.
#
#   scripts/slurm_local.sh start    install slurmctld, slurmd, slurm-client and munge with apt-get
#                                   when slurmctld is missing, start munged (unless one answers
#                                   already), slurmctld and slurmd, wait until the node is idle;
#                                   does nothing when our cluster already runs
#   scripts/slurm_local.sh stop     cancel the cluster's jobs, stop the daemons it started (by pid)
#   scripts/slurm_local.sh status   "running" (exit 0) or "stopped" (exit 1)
#   scripts/slurm_local.sh env      prints `export SLURM_CONF=...`
#
# Conf, state, spool, logs and pid files live in $HEARTLORA_SLURM_DIR (default
# /tmp/heartlora-slurm). The conf is also copied to /etc/slurm/slurm.conf, where sbatch, squeue
# and sinfo look without SLURM_CONF; a file there that this script did not write is left alone
# (start refuses). Partition `local` (default), one node named `hostname -s`, CPUs = nproc,
# no accounting (sacct fails: "Slurm accounting storage is disabled"), KillWait=5 (SIGKILL 5 s
# after SIGTERM), JobRequeue=1, a requeued job runs again ~6 s after it ended (cred_expire=5),
# finished jobs stay in `squeue -t all` for MinJobAge=30 s, requests the partition can never
# run are refused at sbatch (EnforcePartLimits=ALL). Each start clears the job state (ids from 1).
set -euo pipefail

PROG=slurm_local.sh
DIR=$(realpath -m "${HEARTLORA_SLURM_DIR:-/tmp/heartlora-slurm}") # daemons run from /
CONF=$DIR/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
MARK="# written by heartlora scripts/slurm_local.sh"
MUNGE_KEY=/etc/munge/munge.key
NODE=$(hostname -s)

die() {
    echo "$PROG: $*" >&2
    exit 1
}

[[ $DIR =~ ^[A-Za-z0-9_./-]+$ ]] || die "HEARTLORA_SLURM_DIR=$DIR: use letters, digits and _ . / - only (slurm.conf has no quoting)"

# alive PIDFILE NAME: the process named in PIDFILE runs (not a zombie) and is called NAME (not a
# reused pid).
alive() {
    local pid
    [[ -r $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# stop_pid PIDFILE NAME: SIGTERM, up to 10 s, then SIGKILL; removes the pid file.
stop_pid() {
    local pid
    if alive "$1" "$2"; then
        pid=$(<"$1")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            alive "$1" "$2" || break
            sleep 0.2
        done
        if alive "$1" "$2"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$1"
}

ours_in_etc() { [[ -f $ETC_CONF ]] && grep -qxF "$MARK" "$ETC_CONF"; }

munge_answers() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

node_state() { SLURM_CONF=$CONF timeout 5 sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null; }

node_idle() { [[ $(node_state) == idle ]]; }

running() {
    alive "$DIR/slurmctld.pid" slurmctld && alive "$DIR/slurmd.pid" slurmd
}

install_packages() {
    local log=$DIR/apt.log pkgs=(slurmctld slurmd slurm-client munge)
    command -v apt-get >/dev/null || die "slurmctld is missing and there is no apt-get to install it"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q "${pkgs[@]}" >"$log" 2>&1; then
        apt-get update -q >>"$log" 2>&1 || die "apt-get update failed (log: $log)"
        apt-get install -y -q "${pkgs[@]}" >>"$log" 2>&1 ||
            die "apt-get install ${pkgs[*]} failed (log: $log)"
    fi
    command -v slurmctld >/dev/null || die "slurmctld still missing after apt-get install (log: $log)"
}

write_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    cat >"$CONF" <<EOF
$MARK
# One-node test cluster in $DIR; stop it with scripts/slurm_local.sh stop.
ClusterName=heartlora-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job waits cred_expire + 1 s before it may start again (default 120, minimum 5)
AuthInfo=cred_expire=5
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
JobRequeue=1
# Refuse at submission what the partition can never run (e.g. --ntasks=3 on 2 CPUs pends forever).
EnforcePartLimits=ALL
MinJobAge=30
# Test pending jobs every 2 s (default 60 s; backfill 30 s): a requeued job runs again within ~2 s
# of its BeginTime instead of up to a minute later.
SchedulerParameters=sched_interval=2,bf_interval=2
InactiveLimit=0
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    local mdir=$DIR/munge
    if munge_answers; then
        return 0 # a munged answers already (the package's, or one we started): use it
    fi
    id munge >/dev/null 2>&1 || die "user munge is missing (is the munge package installed?)"
    if [[ ! -s $MUNGE_KEY ]]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY" --force >/dev/null 2>&1 ||
                dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge "$MUNGE_KEY"
    chmod 0700 /etc/munge
    chmod 0400 "$MUNGE_KEY"
    mkdir -p /run/munge "$mdir"
    chown munge:munge /run/munge "$mdir"
    chmod 0755 /run/munge
    chmod 0700 "$mdir"
    runuser -u munge -- munged --pid-file="$mdir/munged.pid" --log-file="$mdir/munged.log" \
        >"$DIR/munged.out" 2>&1 || die "munged did not start: $(tail -n 1 "$DIR/munged.out")"
    for _ in $(seq 25); do
        munge_answers && return 0
        sleep 0.2
    done
    die "munged started but does not answer (log: $mdir/munged.log)"
}

cmd_start() {
    [[ $EUID -eq 0 ]] || die "start needs root (it installs packages and runs slurmd as root)"
    mkdir -p "$DIR"
    local state
    if running && state=$(node_state) && [[ -n $state ]]; then
        echo "$PROG: already running (node $NODE $state; conf $CONF)"
        return 0
    fi
    if [[ -e $ETC_CONF ]] && ! ours_in_etc; then
        die "$ETC_CONF exists and was not written by this script; move it away or use that cluster"
    fi
    command -v slurmctld >/dev/null || install_packages
    # What is left of an earlier start of ours (one daemon died, or the node never came up).
    stop_pid "$DIR/slurmd.pid" slurmd
    stop_pid "$DIR/slurmctld.pid" slurmctld
    rm -rf "$DIR/ctld" "$DIR/slurmd"
    mkdir -p "$DIR/ctld" "$DIR/slurmd"
    write_conf
    mkdir -p "$(dirname "$ETC_CONF")"
    cp "$CONF" "$ETC_CONF"
    start_munge
    slurmctld -c -f "$CONF" >"$DIR/slurmctld.out" 2>&1 ||
        die "slurmctld did not start: $(tail -n 1 "$DIR/slurmctld.out") (log: $DIR/slurmctld.log)"
    slurmd -f "$CONF" >"$DIR/slurmd.out" 2>&1 ||
        die "slurmd did not start: $(tail -n 1 "$DIR/slurmd.out") (log: $DIR/slurmd.log)"
    for _ in $(seq 60); do
        if node_idle; then
            echo "$PROG: running (node $NODE idle, $(nproc) CPUs, partition local; conf $CONF, copied to $ETC_CONF)"
            return 0
        fi
        running || break
        sleep 0.5
    done
    if ! alive "$DIR/slurmctld.pid" slurmctld; then
        die "slurmctld exited: $(tail -n 1 "$DIR/slurmctld.log" 2>/dev/null)"
    elif ! alive "$DIR/slurmd.pid" slurmd; then
        die "slurmd exited: $(tail -n 1 "$DIR/slurmd.log" 2>/dev/null)"
    fi
    die "node $NODE not idle after 30 s (sinfo: $(SLURM_CONF=$CONF sinfo -h -N -o '%N %t' 2>&1 | head -n 1); logs in $DIR)"
}

cmd_stop() {
    [[ $EUID -eq 0 ]] || die "stop needs root"
    if alive "$DIR/slurmctld.pid" slurmctld; then
        # The jobs' processes belong to slurmstepd, which outlives slurmd: end them first.
        if [[ -n $(SLURM_CONF=$CONF timeout 5 squeue -h -o %i 2>/dev/null) ]]; then
            SLURM_CONF=$CONF timeout 5 scancel --full --partition=local >/dev/null 2>&1 || true
            for _ in $(seq 30); do
                [[ -z $(SLURM_CONF=$CONF timeout 5 squeue -h -t pending,running,completing -o %i 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_pid "$DIR/slurmd.pid" slurmd
    stop_pid "$DIR/slurmctld.pid" slurmctld
    stop_pid "$DIR/munge/munged.pid" munged
    if ours_in_etc; then
        rm -f "$ETC_CONF"
    fi
    echo "$PROG: stopped"
}

cmd_status() {
    local state
    if running && state=$(node_state) && [[ -n $state ]]; then
        echo "running (node $NODE $state; conf $CONF)"
        return 0
    elif running; then
        echo "daemons run but the controller does not answer (logs in $DIR)"
        return 1
    fi
    echo "stopped"
    return 1
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) echo "export SLURM_CONF=$CONF" ;;
*) die "usage: $PROG start|stop|status|env" ;;
esac
