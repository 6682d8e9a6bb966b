#!/usr/bin/env bash
# fuzz.sh — fuzzes every fuzz target of the module for FUZZTIME (default
# 30s), one after another. The targets are found, not listed by hand, so
# that a new one is fuzzed from the day it is written.
#
# Go 1.26's fuzzing coordinator can fail a target with a bare "context
# deadline exceeded" when -fuzztime runs out while a worker is still busy
# (go.dev/issue/75804, fixed in Go 1.27); a loaded machine makes it likely.
# Such a failure found nothing: a real finding always writes its input
# ("Failing input written to testdata/fuzz/…") or reports a panic or a
# failed check. So a target that fails with that line alone is run once
# more; any other failure fails at once, and a second one of any kind too.
#
# Usage: [FUZZTIME=30s] [ONLY=regexp] scripts/fuzz.sh
set -uo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-30s}
ONLY=${ONLY:-.}
GO=${GO:-go}

# onlyTheDeadlineRace reports whether the log of a failed run shows the
# coordinator's race and nothing else.
onlyTheDeadlineRace() {
  grep -q '^    context deadline exceeded$' "$1" &&
    ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$1"
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
pkgs=$(git ls-files '*_test.go' | xargs grep -l '^func Fuzz' | xargs -n1 dirname | sort -u)
[ -n "$pkgs" ] || { echo "fuzz.sh: no fuzz targets found" >&2; exit 1; }
count=0
for dir in $pkgs; do
  listed=$($GO test -list "^Fuzz" "./$dir") || { echo "$listed"; echo "fuzz.sh: cannot list the fuzz targets of ./$dir" >&2; exit 1; }
  names=$(grep "^Fuzz" <<<"$listed" | grep -E "$ONLY") || continue
  for name in $names; do
    count=$((count + 1))
    for attempt in 1 2; do
      if $GO test -run='^$' -fuzz="^${name}\$" -fuzztime="$FUZZTIME" "./$dir" >"$log" 2>&1; then
        echo "$name: $(grep -E '^fuzz: elapsed' "$log" | tail -n 1)"
        break
      fi
      if [ "$attempt" = 1 ] && onlyTheDeadlineRace "$log"; then
        echo "fuzz.sh: $name ended on Go's fuzztime race (go.dev/issue/75804), nothing found; running it again" >&2
        continue
      fi
      cat "$log"
      echo "fuzz.sh: $name in ./$dir failed" >&2
      exit 1
    done
  done
done
[ "$count" -gt 0 ] || { echo "fuzz.sh: no fuzz target matches ONLY=$ONLY" >&2; exit 1; }
echo "fuzz.sh: $count targets fuzzed for $FUZZTIME each"
