# Shared by up, down and status (sourced, not run). Everything this cluster writes lives under
# $SLURM_LOCAL_DIR, except one symlink: /etc/slurm/slurm.conf -> $SLURM_LOCAL_DIR/etc/slurm.conf.
# The link is needed because the SLURM jobstep plugin strips every SLURM_* variable (SLURM_CONF
# included) from the environment of the `srun` it runs inside each job, so srun must find the
# configuration at the compiled-in default path.

SLURM_LOCAL_DIR="${SLURM_LOCAL_DIR:-/tmp/slurm-local}"
SLURM_LOCAL_CPUS="${SLURM_LOCAL_CPUS:-16}"       # declared, not real: SlurmdParameters=config_overrides
SLURM_LOCAL_MEM_MB="${SLURM_LOCAL_MEM_MB:-64000}"
SLURM_LOCAL_GPUS="${SLURM_LOCAL_GPUS:-2}"        # GPUs that are only counted: placeholder files, no devices
SLURM_LOCAL_PLUGIN="${SLURM_LOCAL_PLUGIN:-snakemake-executor-plugin-slurm==2.8.0}"
SLURM_LOCAL_CTLD_PORT="${SLURM_LOCAL_CTLD_PORT:-6817}"
SLURM_LOCAL_SLURMD_PORT="${SLURM_LOCAL_SLURMD_PORT:-6818}"

ETC_LINK=/etc/slurm/slurm.conf
CONF="$SLURM_LOCAL_DIR/etc/slurm.conf"
MUNGE_DIR="$SLURM_LOCAL_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
RUN_DIR="$SLURM_LOCAL_DIR/run"
LOG_DIR="$SLURM_LOCAL_DIR/log"
NODE="$(hostname -s)"

say() { echo "slurm-local $SCRIPT: $*"; }
die() { echo "slurm-local $SCRIPT: error: $*" >&2; exit 1; }

# The pid in a pid file, when that process is alive and is the daemon named ($2) started with our
# files (its command line names $SLURM_LOCAL_DIR); empty otherwise.
live_pid() {
    local file="$1" name="$2" pid
    [[ -r "$file" ]] || return 0
    pid="$(tr -dc 0-9 < "$file")"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 0
    local cmd
    cmd="$(tr '\0' ' ' < "/proc/$pid/cmdline")"
    [[ "$cmd" == *"$name"* && "$cmd" == *"$SLURM_LOCAL_DIR"* ]] && echo "$pid"
    return 0
}

munged_pid() { live_pid "$MUNGE_DIR/munged.pid" munged; }
slurmctld_pid() { live_pid "$RUN_DIR/slurmctld.pid" slurmctld; }
slurmd_pid() { live_pid "$RUN_DIR/slurmd.pid" slurmd; }

# The node's state as sinfo gives it (idle, mixed, allocated, down*, ...), empty when sinfo fails.
node_state() {
    command -v sinfo >/dev/null 2>&1 || return 0
    timeout 10 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -1
}

cluster_up() {
    [[ -n "$(munged_pid)" && -n "$(slurmctld_pid)" && -n "$(slurmd_pid)" ]] || return 1
    [[ -L "$ETC_LINK" && "$(readlink "$ETC_LINK")" == "$CONF" ]] || return 1
    case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}
