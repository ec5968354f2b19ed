#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, one after another, and prints
# the executions and the outcome of each from libFuzzer's final statistics.
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Each target starts from the committed corpus (fuzz/corpus/TARGET, read only) and the
# regressions (fuzz/regressions/TARGET), and grows a working corpus in fuzz/work/TARGET
# (not committed; minimise it into fuzz/corpus with `cargo fuzz cmin`, see README.md).
# Crash inputs land in fuzz/artifacts/TARGET; the full log of each run in
# fuzz/work/TARGET.log. The toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz's
# nightly flags through. Exits non-zero if any target crashed or failed to run.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift
cd "$(dirname "$0")"
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(frame message discovery key_file state_file)
fi
export RUSTC_BOOTSTRAP=1

# Build them all once, then run the binaries: the timed runs are runs only, and a source
# edited meanwhile does not change what the later targets run.
cargo fuzz build
bin=target/x86_64-unknown-linux-gnu/release

mkdir -p work
status=0
printf '%-12s %14s %10s %8s  %s\n' target executions exec/s cov outcome
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "regressions/$t" "corpus/$t"
    log="work/$t.log"
    rc=0
    mkdir -p "artifacts/$t"
    "$bin/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
        -print_final_stats=1 "work/$t" "corpus/$t" "regressions/$t" >"$log" 2>&1 || rc=$?
    # libFuzzer ends with `stat::number_of_executed_units: N` and its last status line
    # (`#N DONE cov: C ...`, or a crash report instead).
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)[[:space:]]+cov: [0-9]+' "$log" |
        tail -1 | grep -oE '[0-9]+$' || true)
    if [[ $rc -eq 0 ]]; then
        outcome=ok
    else
        status=1
        artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | cut -d' ' -f5 || true)
        reason=$(grep -m1 -A1 'panicked at' "$log" | tr -s '\n' ' ' || true)
        [[ -n $reason ]] || reason=$(grep -m1 -oE 'ERROR: libFuzzer: .*' "$log" || true)
        outcome="CRASH (exit $rc) ${reason:-see $log} ${artifact:+-> $artifact}"
    fi
    printf '%-12s %14s %10s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$outcome"
done
exit $status
