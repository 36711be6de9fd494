#!/usr/bin/env bash
# checkskips.sh UNIT_LOG INTEGRATION_LOG: make test's rule for skipped tests.
#
# Both logs are `go test -v` output of several packages. A test skipped in
# the unit run (no root, no SHAPERD_NETNS) must pass in the integration run;
# a test skipped in the integration run is a failure. The only exceptions are
# listed in ALLOWED below, each with the reason: keep that list and the
# table of skippable tests in docs/development.md the same.
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 UNIT_LOG INTEGRATION_LOG" >&2; exit 2; }

# package<TAB>test name (extended regular expression), one per line.
ALLOWED=$(cat <<'LIST'
github.com/shaperd/shaperd/splice/tcsplice	^TestSpliceForwardRelease/vlan_filtering_bridge
LIST
)

# results LOG STATUS: "package<TAB>test" for every test with that status.
# With several packages go test -v prints each package's output whole,
# ending with its "ok"/"FAIL" line, so a line belongs to the next package
# line that follows it.
results() {
	awk -v want="--- $2:" '
		index($0, want) { sub(/^[ \t]*--- [A-Z]+: /, ""); sub(/ \([0-9.]+s\)$/, ""); pend[n++] = $0 }
		/^(ok|FAIL)[ \t]+[^ \t]+([ \t]|$)/ {
			for (i = 0; i < n; i++) print $2 "\t" pend[i]; n = 0 }
	' "$1"
}

allowed() { # allowed PKG TEST
	local pkg re
	while IFS=$'\t' read -r pkg re; do
		[[ $1 == "$pkg" && $2 =~ $re ]] && return 0
	done <<<"$ALLOWED"
	return 1
}

bad=0
passed=$(results "$2" PASS)
while IFS=$'\t' read -r pkg name; do
	[[ -n $pkg ]] || continue
	allowed "$pkg" "$name" && continue
	echo "checkskips: $pkg $name skipped in the integration run" >&2
	bad=1
done < <(results "$2" SKIP)
while IFS=$'\t' read -r pkg name; do
	[[ -n $pkg ]] || continue
	allowed "$pkg" "$name" && continue
	grep -qxF -- "$pkg"$'\t'"$name" <<<"$passed" && continue
	echo "checkskips: $pkg $name skipped in the unit run and did not pass in the integration run" >&2
	bad=1
done < <(results "$1" SKIP)
exit $bad
