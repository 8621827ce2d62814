#!/usr/bin/env bash
# The README's first command, as on a fresh machine: run scripts/demo.sh from a
# new virtual environment that holds nothing but pip, and check what a
# newcomer must see: exit status 1 (one example fails on purpose) and the
# outcome counts of pytest's final summary line. scripts/test.sh calls it; it
# also runs alone (as root where no engine runs yet, like the demo).
set -euo pipefail
cd "$(dirname "$0")/.."

# examples/passing: 6 passed, 1 skipped, 1 xfailed; examples/failing: 1 passed, 1 failed.
EXPECTED_STATUS=1
EXPECTED_COUNTS="failed=1 passed=7 skipped=1 xfailed=1"

fail() {
  echo "demo-check: FAILED: $*" >&2
  exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/lrun-demo-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
# A fresh machine has no pytest or lrun settings in its environment, and no runs
# in its state dir (which also keeps other runs from making the machine busy).
while read -r name; do unset "$name"; done < <(compgen -e | grep -E '^(LRUN_|PYTEST_|PYTHONPATH$)' || true)
export LRUN_STATE_DIR="$work/state"
status=0
PATH="$work/venv/bin:$PATH" scripts/demo.sh --color=no 2>&1 | tee "$work/out" || status=$?

# e.g. "=== 1 failed, 8 passed, 1 skipped, 1 xfailed in 1.15s ===": outcome=count pairs, sorted;
# warnings are shown but not counted.
summary=$(grep -E '^=+ .* in [0-9.]+s( \([0-9:]+\))? =+$' "$work/out" | tail -n 1) ||
  fail "the demo (exit status $status) printed no pytest summary line; its output is above"
[ "$status" = "$EXPECTED_STATUS" ] ||
  fail "the demo exited with status $status, expected $EXPECTED_STATUS (summary: $summary)"
# (No counts at all, as in "no tests ran", leaves counts empty: a mismatch, reported below.)
counts=$(grep -oE '[0-9]+ [a-z]+' <<<"$summary" | grep -vE ' warnings?$' |
  sed -E 's/ errors$/ error/; s/^([0-9]+) ([a-z]+)$/\2=\1/' | sort | paste -sd' ') || true
[ "$counts" = "$EXPECTED_COUNTS" ] ||
  fail "the demo's outcomes are '$counts', expected '$EXPECTED_COUNTS' (summary: $summary)"
echo "demo-check: ok: exit status $status, $counts"
