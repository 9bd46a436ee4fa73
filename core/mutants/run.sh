#!/usr/bin/env bash
# Mutation testing of edgechat-core (issue 18): a standing measurement, run by hand, not in CI.
#
#   core/mutants/run.sh [--tag NAME] [--shard K/N] [--stage 1|2|both|recheck] [FILE...]
#
# Stage 1 runs every mutant of the chosen core files (default: all of core/src but the test
# harness) against core's own unit tests (`cargo test -p edgechat-core --lib`; dependencies
# built optimised so the crypto tests take seconds). Stage 2 runs only stage 1's survivors
# against the simulator's CI seeds (`cargo test -p sim --test sim seeds_hold_every_invariant`,
# seeds 0..2500). Each stage writes cargo-mutants' own output under
# $CARGO_TARGET_DIR/mutants/<tag>/ and a summary (counts per file, the survivors' names) to
# core/mutants/results/<tag>.stage<N>.md, which is committed. `--stage recheck` runs stage 1's
# survivors again against core's tests as they are now (after new tests were written for
# them), into results/<tag>.stagerecheck.md.
#
# The mutants are applied in place (cargo-mutants' --in-place), so run it in a worktree of its
# own: the files it mutates are rewritten and restored, and an edit made meanwhile would be
# lost. It reuses that worktree's target dir, so only the first build is cold.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=run
shard=()
stage=both
files=()
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=$2; shift 2 ;;
        --shard) shard=(--shard "$2"); shift 2 ;;
        --stage) stage=$2; shift 2 ;;
        -h|--help) sed -n 2,16p "$0"; exit 0 ;;
        *) files+=("$1"); shift ;;
    esac
done

command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants

target=${CARGO_TARGET_DIR:-$root/target}
out=$target/mutants/$tag
mkdir -p "$out" "$here/results"
cd "$root"

# Which files: the ones named, or all of core but the invariant-checking test harness
# (testkit.rs is test code behind a feature; its mutants say nothing about the product).
filter=()
if [ ${#files[@]} -gt 0 ]; then
    for f in "${files[@]}"; do filter+=(-f "$f"); done
else
    filter+=(-e core/src/testkit.rs)
fi

common=(
    -p edgechat-core --in-place --baseline skip --no-shuffle
)
# Stage 1: dependencies optimised, as the RSA/ECDSA tests are 20x slower in a debug build.
# (Stage 2 keeps the plain debug build, which `cargo test -p sim` has already built.)
optimised_deps="-C=--config=profile.dev.package.\"*\".opt-level=3"

# Counts per file and outcome, and the survivors, as markdown.
summarise() { # stage dir
    local n=$1 dir=$2/mutants.out md=$here/results/$tag.stage$1.md
    {
        echo "# Mutants $tag, stage $n ($(date -u +%F))"
        echo
        echo "Command: core/mutants/run.sh --tag $tag ${shard[*]} --stage $n ${files[*]}"
        echo
        echo "| file | caught | missed | timeout | unviable |"
        echo "|---|---|---|---|---|"
        for o in caught missed timeout unviable; do
            [ -f "$dir/$o.txt" ] && sed "s/:.*//; s/^/$o /" "$dir/$o.txt"
        done | sort -k2 | awk '{c[$2" "$1]++; f[$2]=1}
            END {for (x in f) printf "| %s | %d | %d | %d | %d |\n", x, c[x" caught"], c[x" missed"], c[x" timeout"], c[x" unviable"]}' | sort
        for o in caught missed timeout unviable; do
            printf '%s ' "$o:"; cat "$dir/$o.txt" 2>/dev/null | wc -l
        done
        echo
        echo "## Missed"
        echo '```'
        cat "$dir/missed.txt" 2>/dev/null || true
        echo '```'
        echo "## Timeouts"
        echo '```'
        cat "$dir/timeout.txt" 2>/dev/null || true
        echo '```'
    } > "$md"
    echo "summary: $md"
}

if [ "$stage" = 1 ] || [ "$stage" = both ]; then
    start=$(date +%s)
    # cargo-mutants exits 2 when mutants are missed, 3 on timeouts: expected, not errors.
    nice -n 19 cargo mutants "${common[@]}" "$optimised_deps" "${shard[@]}" "${filter[@]}" \
        --timeout 90 --build-timeout 600 --cargo-test-arg=--lib \
        -o "$out/stage1" || true
    echo "stage 1: $(( $(date +%s) - start )) s"
    summarise 1 "$out/stage1"
fi

# Sets `regexes` to select exactly stage 1's survivors.
survivors() {
    missed=$out/stage1/mutants.out/missed.txt
    regexes=()
    [ -s "$missed" ] || return 0
    # One regex per survivor, matched against the names `--list` shows,
    while IFS= read -r name; do
        regexes+=(-F "^$(printf '%s' "$name" | sed 's/[][\.*^$()+?{}|]/\\&/g')\$")
    done < "$missed"
    # and their files (cargo-mutants 27 lets "delete field" mutants past -F).
    for f in $(cut -d: -f1 "$missed" | sort -u); do regexes+=(-f "$f"); done
}

if [ "$stage" = recheck ]; then
    survivors
    if [ ${#regexes[@]} -eq 0 ]; then echo "recheck: no survivors"; exit 0; fi
    start=$(date +%s)
    nice -n 19 cargo mutants "${common[@]}" "$optimised_deps" "${regexes[@]}" \
        --timeout 90 --build-timeout 600 --cargo-test-arg=--lib \
        -o "$out/stagerecheck" || true
    echo "recheck: $(( $(date +%s) - start )) s"
    summarise recheck "$out/stagerecheck"
fi

if [ "$stage" = 2 ] || [ "$stage" = both ]; then
    survivors
    if [ ${#regexes[@]} -eq 0 ]; then echo "stage 2: no survivors"; exit 0; fi
    start=$(date +%s)
    nice -n 19 cargo mutants "${common[@]}" "${regexes[@]}" \
        --timeout 900 --build-timeout 900 \
        --test-package sim --cargo-test-arg=--test=sim \
        -o "$out/stage2" -- seeds_hold_every_invariant || true
    echo "stage 2: $(( $(date +%s) - start )) s"
    summarise 2 "$out/stage2"
fi
