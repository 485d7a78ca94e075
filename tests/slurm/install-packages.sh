#!/usr/bin/env bash
# Install the Debian packages of a single-node SLURM cluster, unless already there.
#   tests/slurm/install-packages.sh           install what is missing (root)
#   tests/slurm/install-packages.sh --check   exit 0 if everything is installed, else 1
# Safe to run concurrently (a lock serialises it); `.ci/run` starts it early, in the
# background, so that the download overlaps the test environment's set-up. "Installed"
# means dpkg has configured the packages (their users and directories exist), not merely
# that the binaries are unpacked.
set -euo pipefail
packages=(slurm-wlm slurmctld slurmd slurmdbd slurm-client munge mariadb-server)
have_all() {
    local status
    for package in "${packages[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$package" 2> /dev/null || true)
        [[ $status == "install ok installed" ]] || return 1
    done
    id munge > /dev/null 2>&1 && id mysql > /dev/null 2>&1
}
if [[ ${1:-} == --check ]]; then
    have_all
    exit
fi
have_all && exit 0
[[ $(id -u) -eq 0 ]] || { echo "install-packages: SLURM is not installed and installing needs root" >&2; exit 1; }
exec 9> /var/lock/protolib-slurm-install.lock
flock 9
have_all && exit 0
export DEBIAN_FRONTEND=noninteractive
start=$SECONDS
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge slurmdbd mariadb-server > /dev/null
have_all || { echo "install-packages: packages installed but not configured" >&2; exit 1; }
echo "install-packages: SLURM, munge and MariaDB installed in $((SECONDS - start)) s"
