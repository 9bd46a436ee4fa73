#!/usr/bin/env bash
# Runs every fuzz target with cargo-fuzz on nightly for SECONDS each and prints a table of
# executions and coverage, parsed from libFuzzer's final `#N DONE cov: X ft: Y` line.
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Environment:
#   JOBS=2          run this many targets at a time (default 1; the machine is shared)
#   SANITIZER=none  cargo-fuzz sanitizer (default none: the code is safe Rust, and without
#                   ASan libFuzzer runs several times more executions; use `address` to check deps)
#   RSS_MB=2048     libFuzzer's per-process memory limit
#
# New inputs go to fuzz/corpus-work/<target>/ (git-ignored), seeded from the committed
# fuzz/corpus/<target>/; logs to fuzz/corpus-work/logs/. Crashes land in fuzz/artifacts/.
# To fold what a run found into the committed corpus, minimized:
#   cargo +nightly fuzz cmin -s none <target> fuzz/corpus/<target>   (after copying the new files in)
# cargo-fuzz sets RUSTFLAGS itself, replacing the repo's `--cfg madsim`; fuzzing does not
# involve madsim, so that is intended.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
jobs=${JOBS:-1}
sanitizer=${SANITIZER:-none}
rss=${RSS_MB:-2048}
work="$here/corpus-work"
mkdir -p "$work/logs"

cargo +nightly fuzz build -s "$sanitizer" >&2

run_one() {
    local target=$1
    mkdir -p "$work/$target" "$here/corpus/$target"
    local status=0
    cargo +nightly fuzz run -s "$sanitizer" "$target" "$work/$target" "$here/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss" -print_final_stats=1 \
        >"$work/logs/$target.log" 2>&1 || status=$?
    echo "$status" >"$work/logs/$target.status"
}

running=0
for target in "${targets[@]}"; do
    echo "fuzzing $target for ${seconds}s" >&2
    run_one "$target" &
    running=$((running + 1))
    if [[ $running -ge $jobs ]]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

printf '| %-15s | %12s | %10s | %6s | %6s | %6s | %s |\n' target executions exec/s cov ft corpus result
printf '|%s|%s|%s|%s|%s|%s|%s|\n' -----------------  -------------- ------------ -------- -------- -------- --------
failed=0
for target in "${targets[@]}"; do
    log="$work/logs/$target.log"
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true)
    execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$done_line")
    cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$done_line")
    ft=$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$done_line")
    corp=$(sed -nE 's/.*corp: ([0-9]+\/[^ ]+).*/\1/p' <<<"$done_line")
    rate=$(sed -nE 's/.*exec\/s: ([0-9]+).*/\1/p' <<<"$done_line")
    status=$(cat "$work/logs/$target.status" 2>/dev/null || echo "?")
    result=ok
    if [[ $status != 0 || -z $done_line ]]; then
        result="FAILED (exit $status, see $log)"
        failed=1
    fi
    printf '| %-15s | %12s | %10s | %6s | %6s | %6s | %s |\n' \
        "$target" "${execs:--}" "${rate:--}" "${cov:--}" "${ft:--}" "${corp:--}" "$result"
done
exit $failed
