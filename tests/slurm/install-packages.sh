#!/usr/bin/env bash
# Install the Debian packages of a single-node SLURM cluster, unless already there.
# Safe to run concurrently (a lock serialises it); `.ci/run` starts it early, in the
# background, so that the download overlaps the test environment's set-up.
set -euo pipefail
needed=(sbatch sacct sacctmgr slurmctld slurmd slurmdbd munged mungekey mariadbd mariadb-install-db)
have_all() {
    local tool
    for tool in "${needed[@]}"; do
        PATH=$PATH:/usr/sbin:/sbin command -v "$tool" > /dev/null || return 1
    done
}
have_all && exit 0
[[ $(id -u) -eq 0 ]] || { echo "install-packages: SLURM is not installed and installing needs root" >&2; exit 1; }
exec 9> /var/lock/protolib-slurm-install.lock
flock 9
have_all && exit 0
export DEBIAN_FRONTEND=noninteractive
start=$SECONDS
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge slurmdbd mariadb-server > /dev/null
have_all || { echo "install-packages: packages installed but tools missing" >&2; exit 1; }
echo "install-packages: SLURM, munge and MariaDB installed in $((SECONDS - start)) s"
