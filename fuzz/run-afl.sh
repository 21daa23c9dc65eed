#!/usr/bin/env bash
# Coverage-guided fuzzing of one target of tooldb_node::fuzzing with AFL++ on
# stable Rust, until EXECS executions, without a UI; prints what it did.
#
#   fuzz/run-afl.sh TARGET EXECS      TARGET: wire | record | crdt | reconcile
#
# Seeds: fuzz/corpus/TARGET/. Output (queue, crashes, hangs, fuzzer_stats):
# fuzz/out/TARGET/ (git-ignored), started afresh each run; AFL_AUTORESUME=1
# resumes it instead. Runs afl-fuzz under `nice` (NICE, default 10).
# Needs cargo-afl (`cargo install cargo-afl`), installed here if missing.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 TARGET EXECS" >&2
    exit 2
fi
target=$1
execs=$2
here=$(cd "$(dirname "$0")" && pwd)
seeds=$here/corpus/$target
out=$here/out/$target
[ -d "$seeds" ] || { echo "no seed corpus $seeds" >&2; exit 2; }

command -v cargo-afl >/dev/null || cargo install --locked cargo-afl
cargo afl config --build >/dev/null 2>&1 || true # AFL++ itself, once per rustc

cd "$here/afl"
cargo afl build --release --locked --bin "$target"

[ "${AFL_AUTORESUME:-0}" = 1 ] || rm -rf "$out"
mkdir -p "$here/out"
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1 # leave the cores to the scheduler (other builds run too)
start=$(date +%s)
nice -n "${NICE:-10}" cargo afl fuzz -i "$seeds" -o "$out" -x "$here/afl/tooldb.dict" \
    -E "$execs" -t 2000 -- "$here/afl/target/release/$target" >"$here/out/$target.log" 2>&1 || {
    tail -30 "$here/out/$target.log" >&2
    exit 1
}
end=$(date +%s)

stats=$out/default/fuzzer_stats
get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
crashes=$(find "$out/default/crashes" -type f -name 'id:*' | wc -l)
hangs=$(find "$out/default/hangs" -type f -name 'id:*' | wc -l)
echo "target:      $target"
echo "execs done:  $(get execs_done)"
echo "exec/s:      $(get execs_per_sec)"
echo "wall time:   $((end - start)) s"
echo "crashes:     $crashes (saved_crashes $(get saved_crashes))"
echo "hangs:       $hangs"
echo "corpus:      $(get corpus_count) entries ($(get corpus_found) found), edges $(get edges_found)/$(get total_edges), bitmap $(get bitmap_cvg)"
if [ "$crashes" -gt 0 ]; then
    echo "crashing inputs: $out/default/crashes/"
    exit 1
fi
