#!/usr/bin/env bash
# The time of `make test` from a fresh clone, as CI runs it (.ci/run: the environment built
# from nothing, lint, the whole suite with the cluster test), for each revision given, one
# after another on this machine: the first is the baseline of the same run.
#
#   benchmarks/fresh_clone.sh [--keep] REV [REV...]     e.g. benchmarks/fresh_clone.sh 202fadf HEAD
#
# Per revision: the wall time of .ci/run, the CPU time the whole machine was busy meanwhile
# (/proc/stat: keep the machine otherwise idle), pytest's own time and its summary line.
# Each clone is made in a temporary folder and removed afterwards (--keep keeps them, and
# their logs, and prints where). Takes about 8 minutes per revision on 2 cores.
set -euo pipefail

usage="usage: benchmarks/fresh_clone.sh [--keep] REV [REV...]"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
keep=0
revs=()
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        -*) echo "fresh_clone.sh: unknown option $arg; $usage" >&2; exit 2 ;;
        *) revs+=("$arg") ;;
    esac
done
if [ ${#revs[@]} -eq 0 ]; then
    echo "fresh_clone.sh: no revision given; $usage" >&2
    exit 2
fi
for rev in "${revs[@]}"; do
    if ! git -C "$root" rev-parse --verify --quiet "$rev^{commit}" > /dev/null; then
        echo "fresh_clone.sh: revision $rev is not a commit of $root; $usage" >&2
        exit 2
    fi
done

busy() {  # CPU ticks spent not idle, all cores (user nice system irq softirq steal)
    read -r _ user nice system _ _ irq softirq steal _ < /proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}

work="$(mktemp -d)"
[ "$keep" -eq 1 ] || trap 'rm -rf "$work"' EXIT
ticks="$(getconf CLK_TCK)"
printf '%-12s %-9s %8s %9s %9s  %s\n' revision commit "wall s" "busy s" "pytest s" "pytest summary"
for rev in "${revs[@]}"; do
    commit="$(git -C "$root" rev-parse --short "$rev^{commit}")"
    clone="$work/$commit"
    git clone --quiet "$root" "$clone"
    git -C "$clone" checkout --quiet "$commit"
    b0="$(busy)"
    t0="$(date +%s.%N)"
    status=0
    (cd "$clone" && .ci/run > "$work/$commit.log" 2>&1) || status=$?
    t1="$(date +%s.%N)"
    b1="$(busy)"
    summary="$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$work/$commit.log" | tail -1 | tr -d '=' || true)"
    seconds="$(sed -nE 's/.* in ([0-9.]+)s.*/\1/p' <<< "$summary")"
    printf '%-12s %-9s %8.1f %9d %9s  %s (exit %d)\n' "$rev" "$commit" \
        "$(echo "$t1 - $t0" | bc)" $(((b1 - b0) / ticks)) "${seconds:--}" "${summary# }" "$status"
done
[ "$keep" -eq 0 ] || echo "clones and logs kept in $work"
