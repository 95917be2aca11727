#!/usr/bin/env bash
# Runs every Go fuzz target of the module for FUZZTIME each.
#
#   FUZZTIME=5m        time per target (go test -fuzztime)
#   FUZZMINIMIZE=5s    time to minimise each new input (go test -fuzzminimizetime)
#   FUZZ_JOBS=1        targets fuzzed at once (each with FUZZ_PARALLEL workers)
#   FUZZ_PARALLEL=     workers per target (default: go test's, GOMAXPROCS)
#   FUZZ_SAVE=1        copy the new interesting inputs into PKG/testdata/fuzz/TARGET,
#                      where go test runs them as seeds from then on
#   FUZZ_TARGETS=RE    only targets whose name matches RE
#
# Go fuzzes one target per go test call, so targets are found with
# go test -list and run one after the other (FUZZ_JOBS at a time). A
# failing input is written to PKG/testdata/fuzz/TARGET by go test itself;
# keep it there as a regression seed once the bug is fixed.
set -euo pipefail

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-5m}
FUZZMINIMIZE=${FUZZMINIMIZE:-5s}
FUZZ_JOBS=${FUZZ_JOBS:-1}
FUZZ_PARALLEL=${FUZZ_PARALLEL:-}
FUZZ_SAVE=${FUZZ_SAVE:-1}
FUZZ_TARGETS=${FUZZ_TARGETS:-.}

cd "$(dirname "$0")/.."
module=$($GO list -m)
cache="$($GO env GOCACHE)/fuzz"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# Packages with fuzz targets: only those are compiled for go test -list
# (listing runs a package's TestMain, which for some starts servers).
mapfile -t dirs < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u)
targets=()
for d in "${dirs[@]}"; do
	pkg="$module/${d#./}"
	[ "$d" = "." ] && pkg=$module
	while read -r name; do
		[[ $name == Fuzz* ]] && [[ $name =~ $FUZZ_TARGETS ]] && targets+=("$d $pkg $name")
	done < <($GO test -list '^Fuzz' "$d")
done
echo "fuzz: ${#targets[@]} targets, $FUZZTIME each, $FUZZ_JOBS at a time"

# count prints the number of files in directory $1 (0 if it is absent).
count() {
	if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi
}

# one fuzzes target $3 of package $2 in directory $1; its output goes to
# a log, shown when it ends.
one() {
	local dir=$1 pkg=$2 name=$3 log="$logs/$3.log" stamp="$logs/$3.stamp"
	touch "$stamp"
	local corpus="$dir/testdata/fuzz/$name"
	local before
	before=$(count "$corpus")
	local args=(-run '^$' -fuzz "^$name\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZE")
	[ -n "$FUZZ_PARALLEL" ] && args+=(-parallel "$FUZZ_PARALLEL")
	local start=$SECONDS rc=0
	$GO test "${args[@]}" "$dir" >"$log" 2>&1 || rc=$?
	local after
	after=$(count "$corpus")
	if [ $rc -ne 0 ] && [ "$after" -eq "$before" ] && grep -q '^    context deadline exceeded$' "$log" &&
		! grep -q -e 'Failing input' -e 'panic:' "$log"; then
		# Go 1.26's fuzz coordinator can report its own -fuzztime
		# deadline as a failure (go.dev/issue/75804): no input failed.
		echo "fuzz: $pkg $name: ok ($((SECONDS - start))s; go reported its own deadline, go.dev/issue/75804)"
		rc=0
	elif [ $rc -ne 0 ]; then
		cat "$log"
		echo "fuzz: $pkg $name: FAILED; the failing input is in $corpus"
	else
		echo "fuzz: $pkg $name: ok ($((SECONDS - start))s, $(grep -o 'new interesting: [0-9]*' "$log" | tail -1))"
	fi
	if [ $rc -eq 0 ] && [ "$FUZZ_SAVE" = 1 ] && [ -d "$cache/$pkg/$name" ]; then
		local new
		new=$(find "$cache/$pkg/$name" -type f -newer "$stamp" | wc -l)
		if [ "$new" -gt 0 ]; then
			mkdir -p "$corpus"
			find "$cache/$pkg/$name" -type f -newer "$stamp" -exec cp {} "$corpus/" \;
			echo "fuzz: $pkg $name: $new new inputs saved in $corpus"
		fi
	fi
	return $rc
}

failed=0
running=0
for t in "${targets[@]}"; do
	# shellcheck disable=SC2086
	one $t &
	running=$((running + 1))
	if [ "$running" -ge "$FUZZ_JOBS" ]; then
		wait -n || failed=$((failed + 1))
		running=$((running - 1))
	fi
done
while [ "$running" -gt 0 ]; do
	wait -n || failed=$((failed + 1))
	running=$((running - 1))
done
if [ "$failed" -gt 0 ]; then
	echo "fuzz: $failed of ${#targets[@]} targets failed"
	exit 1
fi
echo "fuzz: all ${#targets[@]} targets passed"
