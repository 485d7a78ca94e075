#!/usr/bin/env bash
# Stop the cluster started by start-cluster.sh STATE_DIR: cancel its jobs, then end
# exactly the daemons it recorded (STATE_DIR/pids), in reverse order of start, each with
# SIGTERM and, after 15 s, SIGKILL. A PID whose process is no longer that daemon is skipped.
set -uo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
S=$(realpath -m "$1")
[[ -f $S/pids ]] || { echo "stop-cluster: no $S/pids: nothing was started there" >&2; exit 0; }
export SLURM_CONF=$S/etc/slurm.conf

is_ours() {  # is_ours NAME PID: PID is alive (not a zombie) and is the daemon NAME
    local comm state
    comm=$(cat "/proc/$2/comm" 2> /dev/null) || return 1
    state=$(sed 's/.*) //' "/proc/$2/stat" 2> /dev/null | cut -d' ' -f1) || return 1
    [[ $comm == "$1" && $state != Z ]]
}

# Jobs first, so that no slurmstepd outlives slurmd.
if grep -q '^slurmctld ' "$S/pids" && is_ours slurmctld "$(awk '$1 == "slurmctld" {print $2}' "$S/pids")"; then
    jobs=$(timeout 10 squeue -h -o %A 2> /dev/null || true)
    if [[ -n $jobs ]]; then
        timeout 10 scancel $jobs 2> /dev/null || true
        for _ in $(seq 200); do  # up to 40 s: SLURM's KillWait is 30 s
            [[ -z $(timeout 10 squeue -h -o %A 2> /dev/null) ]] && break
            sleep 0.2
        done
    fi
fi

status=0
tac "$S/pids" | while read -r name pid; do
    is_ours "$name" "$pid" || continue
    kill -TERM "$pid" 2> /dev/null
    for _ in $(seq 75); do
        is_ours "$name" "$pid" || break
        sleep 0.2
    done
    if is_ours "$name" "$pid"; then
        echo "stop-cluster: $name ($pid) ignored SIGTERM; killing it" >&2
        kill -KILL "$pid" 2> /dev/null
    fi
done
# The configuration links made by start-cluster.sh, if they still point here.
for name in slurm.conf gres.conf; do
    if [[ -L /etc/slurm/$name && $(readlink "/etc/slurm/$name") == "$S/etc/$name" ]]; then
        rm -f "/etc/slurm/$name"
    fi
done
left=""
while read -r name pid; do
    is_ours "$name" "$pid" && left+=" $name($pid)"
done < "$S/pids"
if [[ -n $left ]]; then
    echo "stop-cluster: still running:$left" >&2
    status=1
else
    mv "$S/pids" "$S/pids.stopped"
    echo "stop-cluster: stopped"
fi
exit $status
