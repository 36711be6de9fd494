# testsummary.awk: reads `go test -v` output and prints what a terminal needs:
# each package's result line, panics and build failures, and the whole output
# of every test that failed. The full log is kept by the caller (tee).
/^=== (RUN|CONT|PAUSE|NAME)/ { name = $3; if ($2 == "RUN") out[name] = ""; next }
/^[ \t]*--- FAIL: / {
	n = $3
	printf "%s", out[n]
	print
	next
}
/^[ \t]*--- (PASS|SKIP): / { delete out[$3]; next }
/^(ok|FAIL|panic:|\?)[ \t]/ || /^FAIL$/ || /^# / || /\.go:[0-9]+:[0-9]+: / { print; next }
{ if (name != "") out[name] = out[name] $0 "\n" }
