#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine, for the cluster test and for trying
# the slurm profile by hand. Needs root; no systemd (every daemon is started here).
#
#   tests/slurm/start-cluster.sh STATE_DIR      then: source STATE_DIR/env
#   tests/slurm/stop-cluster.sh STATE_DIR       stops exactly the daemons started here
#
# Started, in order: munged, MariaDB (the accounting database), slurmdbd (accounting, so
# that `sacct` answers the executor plugin's status queries), slurmctld and slurmd, with
# this host as the only node, select/cons_tres, and one GRES "gpu" backed by /dev/null so
# that `--gpus=1` jobs schedule on a CPU-only node. Everything (configs, database, spool,
# logs, PIDs, free TCP ports) lives in STATE_DIR, except two links, /etc/slurm/slurm.conf
# and gres.conf, to its configs: job steps (srun inside a job) look for the configuration
# only there. An existing /etc/slurm/slurm.conf that is not such a link is never replaced.
# Missing Debian packages (slurm-wlm munge slurmdbd mariadb-server) are installed first.
# If start-up fails part-way, stop-cluster.sh STATE_DIR stops what was started.
set -euo pipefail

die() { echo "start-cluster: $*" >&2; exit 1; }
trap 'echo "start-cluster: failed at line $LINENO: $BASH_COMMAND" >&2; tail -n 5 "${S:-/nonexistent}"/log/*.out "${S:-/nonexistent}"/munge/munged.log 2> /dev/null >&2' ERR

[[ $# -eq 1 ]] || die "usage: $0 STATE_DIR (an empty or new directory)"
[[ $(id -u) -eq 0 ]] || die "must run as root (the daemons and the package install need it)"
S=$(realpath -m "$1")
[[ ! -e $S/pids ]] || die "$S/pids exists: a cluster may be running; stop it with stop-cluster.sh $S"
# /etc/slurm/{slurm,gres}.conf may only be absent, or links left by this script (into a
# state directory, recognised by its pids file) whose cluster is no longer running.
for name in slurm.conf gres.conf; do
    link=/etc/slurm/$name
    [[ -e $link || -L $link ]] || continue
    [[ -L $link ]] || die "$link exists and is not a link made by this script; not replacing it"
    old=$(dirname "$(dirname "$(readlink "$link")")")
    if [[ -f $old/pids ]]; then
        die "$link belongs to a running cluster in $old; stop it first (stop-cluster.sh $old)"
    fi
    [[ -f $old/pids.stopped ]] \
        || die "$link points to $(readlink "$link"), not into a state directory of this script"
done
# Unix socket paths are limited to 107 bytes.
(( ${#S} <= 60 )) || die "state directory path too long for its sockets (max 60 characters): $S"

HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/install-packages.sh"

CLUSTER=protolib
HOST=$(hostname -s)
mkdir -p "$S"
chmod 755 "$S"  # the munge and mysql users must reach their directories
mkdir -p "$S/etc" "$S/log" "$S/run" "$S/spool/ctld" "$S/spool/d" "$S/munge" "$S/mysql"
: > "$S/pids"

export SLURM_CONF=$S/etc/slurm.conf
cat > "$S/env" <<ENV
export SLURM_CONF=$SLURM_CONF
ENV

record() { echo "$1 $2" >> "$S/pids"; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" > /dev/null 2>&1; do
        if (( SECONDS >= deadline )); then
            echo "start-cluster: $what did not come up within ${seconds}s; last log lines:" >&2
            tail -n 20 "$S"/log/*.log >&2 || true
            echo "start-cluster: stop what was started with: $HERE/stop-cluster.sh $S" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# 1. munge, with its own key and socket.
chown munge:munge "$S/munge"
chmod 755 "$S/munge"  # munged requires the socket directory to be searchable by all
runuser -u munge -- mungekey --create --force --keyfile="$S/munge/munge.key" > /dev/null
chmod 400 "$S/munge/munge.key"
runuser -u munge -- munged --key-file="$S/munge/munge.key" --socket="$S/munge/munge.socket" \
    --pid-file="$S/munge/munged.pid" --log-file="$S/munge/munged.log" \
    --seed-file="$S/munge/munged.seed" < /dev/null > "$S/log/munged.out" 2>&1
wait_for 10 munged test -s "$S/munge/munged.pid"
record munged "$(cat "$S/munge/munged.pid")"
wait_for 10 "munge credentials" sh -c "munge -n -S '$S/munge/munge.socket' | unmunge -S '$S/munge/munge.socket'"

# Free TCP ports for MariaDB, slurmdbd, slurmctld and slurmd (never a running SLURM's).
read -r DB_PORT DBD_PORT CTLD_PORT D_PORT < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(4)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
')

# 2. MariaDB for the accounting database.
DB_PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
chown mysql:mysql "$S/mysql"
mariadb-install-db --no-defaults --user=mysql --datadir="$S/mysql/data" --skip-test-db \
    --auth-root-authentication-method=socket > "$S/log/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed; see $S/log/mariadb-install.log"
mariadbd --no-defaults --user=mysql --datadir="$S/mysql/data" --socket="$S/mysql/mysqld.sock" \
    --pid-file="$S/mysql/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --log-error="$S/log/mariadb.log" < /dev/null > /dev/null 2>&1 &
record mariadbd $!
wait_for 60 MariaDB mariadb-admin --no-defaults --socket="$S/mysql/mysqld.sock" ping
mariadb --no-defaults --socket="$S/mysql/mysqld.sock" -u root <<SQL
CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

# 3. Configuration. `slurmd -C` describes this machine; memory a little under it.
slurmd -C > "$S/etc/node.txt"
NODE=$(sed -n 1p "$S/etc/node.txt")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$NODE")
NODE=$(sed "s/RealMemory=[0-9]*/RealMemory=$((MEM * 9 / 10))/; s/NodeName=[^ ]*/NodeName=$HOST/" <<< "$NODE")
cat > "$S/etc/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$S/munge/munge.socket
CredType=cred/munge
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
StateSaveLocation=$S/spool/ctld
SlurmdSpoolDir=$S/spool/d
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
# Without a default, a job without --mem takes the whole node and jobs run one at a time.
DefMemPerCPU=2000
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# GPUs and the job comment (the plugin writes the rule name there) in the job records.
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
# With accounting_storage/slurmdbd this names the munge socket for talking to slurmdbd.
AccountingStoragePass=$S/munge/munge.socket
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
ReturnToService=2
MailProg=/bin/true
$NODE Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# A GPU entry backed by /dev/null: without File= the node drains (gres count too low).
echo "NodeName=$HOST Name=gpu File=/dev/null Count=1" > "$S/etc/gres.conf"
cat > "$S/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$S/munge/munge.socket
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$S/run/slurmdbd.pid
LogFile=$S/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
chmod 600 "$S/etc/slurmdbd.conf"
mkdir -p /etc/slurm
ln -sfn "$S/etc/slurm.conf" /etc/slurm/slurm.conf
ln -sfn "$S/etc/gres.conf" /etc/slurm/gres.conf

# 4. slurmdbd; the cluster registered in the accounting database.
slurmdbd -D < /dev/null > "$S/log/slurmdbd.out" 2>&1 &
record slurmdbd $!
wait_for 60 slurmdbd sacctmgr -n show cluster
sacctmgr -i add cluster "$CLUSTER" > /dev/null

# 5. slurmctld, then slurmd; the node must come up idle.
slurmctld -D -c -f "$SLURM_CONF" < /dev/null > "$S/log/slurmctld.out" 2>&1 &
record slurmctld $!
wait_for 60 slurmctld sh -c "scontrol ping | grep -q UP"
slurmd -D -f "$SLURM_CONF" < /dev/null > "$S/log/slurmd.out" 2>&1 &
record slurmd $!
wait_for 60 "the node (idle in sinfo)" sh -c "sinfo -h -o %T | grep -qx idle"
echo "start-cluster: cluster '$CLUSTER' up on $HOST (state in $S; source $S/env)"
