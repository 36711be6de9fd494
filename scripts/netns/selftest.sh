#!/usr/bin/env bash
# selftest.sh: smoke test of the lab and its tools (flood, sink, probe).
# Builds the tools (or takes them from SHAPERD_BIN), brings a lab up, checks
# what each tool promises, tears the lab down and checks that nothing is
# left. Exits non-zero on the first failed check; cleans up in a trap either
# way. Needs root, and Go unless SHAPERD_BIN holds the tools.
#
#   scripts/netns/selftest.sh            # LAB defaults to st<pid>
#   LAB=st1 scripts/netns/selftest.sh
#   SHAPERD_BIN=$PWD/bin scripts/netns/selftest.sh   # the tools make tools built
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LABSH=$HERE/lab.sh
export LAB=${LAB:-st$$}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/selftest-$LAB.XXXXXX")
BG=() # PIDs of background processes this script started
lab_built=0

say() { echo "selftest: $*" >&2; }
fail() {
	say "FAIL: $*"
	exit 1
}

cleanup() {
	local rc=$? pid
	for pid in "${BG[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${BG[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ $lab_built == 1 ]]; then
		"$LABSH" down || rc=1
	fi
	rm -rf -- "$TMP"
	if [[ $rc -eq 0 ]]; then say "PASS"; else say "exit $rc"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# jnum KEY FILE: the last numeric value of "KEY" in a file of JSON lines.
jnum() { sed -n "s/.*\"$1\":\(-\{0,1\}[0-9][0-9.eE+-]*\).*/\1/p" "$2" | tail -n 1; }
# within A B PCT: |A-B| <= PCT% of B
within() { awk -v a="$1" -v b="$2" -v p="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= b * p / 100) }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }

# wait_for FILE PATTERN: wait up to 5 s for a line in FILE (a tool's ready message).
wait_for() {
	local i
	for i in $(seq 50); do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	fail "timed out waiting for '$2' in $1: $(cat "$1" 2>/dev/null)"
}

# bg NS OUT ERR CMD...: run CMD in namespace NS in the background.
bg() {
	local ns=$1 out=$2 err=$3
	shift 3
	ip netns exec "$ns" "$@" >"$out" 2>"$err" &
	BG+=($!)
	LAST_BG=$!
}

[[ $(id -u) -eq 0 ]] || fail "needs root"

# The tools: those in SHAPERD_BIN if it is set (make integration built
# them from this tree), else built here.
tools=$TMP
if [[ -n ${SHAPERD_BIN:-} ]]; then
	tools=$SHAPERD_BIN
	for t in flood sink probe; do
		[[ -x $tools/$t ]] || fail "SHAPERD_BIN=$tools has no $t (make tools builds it)"
	done
	say "using the tools in $tools"
else
	say "building tools into $TMP"
	for t in flood sink probe; do
		(cd "$ROOT" && go build -o "$TMP/$t" "./scripts/netns/$t") || fail "go build $t"
	done
fi
FLOOD=$tools/flood SINK=$tools/sink PROBE=$tools/probe

# --- refusals that need no lab (and cannot send anywhere if they failed) ---
if "$LABSH" up nosuchmode 2>"$TMP/mode.err"; then fail "lab.sh up nosuchmode was accepted"; fi
grep -q "unknown mode 'nosuchmode'" "$TMP/mode.err" || fail "lab.sh up nosuchmode: unclear message: $(cat "$TMP/mode.err")"
if LAB='bad-name' "$LABSH" up 2>"$TMP/name.err"; then fail "lab.sh accepted LAB=bad-name"; fi
grep -q "letters, digits or _" "$TMP/name.err" || fail "LAB=bad-name: unclear message: $(cat "$TMP/name.err")"
# An unnamed namespace has no routes at all: safe place to check the guard.
command -v unshare >/dev/null || fail "unshare (util-linux) is needed"
if unshare -n "$FLOOD" --dst 198.18.0.100 --duration 1s 2>"$TMP/g.err"; then fail "flood ran outside a named netns"; fi
grep -q "named network namespace" "$TMP/g.err" || fail "flood outside netns: $(cat "$TMP/g.err")"
for bad in 10.0.0.1 192.0.2.1 2001:db8::1 fd00::1; do
	if "$FLOOD" --dst "$bad" --duration 1s 2>"$TMP/g.err"; then fail "flood accepted --dst $bad"; fi
	grep -q "outside the lab ranges" "$TMP/g.err" || fail "flood --dst $bad: $(cat "$TMP/g.err")"
done
if "$PROBE" client --connect 10.0.0.1:22 --count 1 2>/dev/null; then fail "probe accepted 10.0.0.1"; fi
if "$SINK" --listen 10.0.0.1:9 2>/dev/null; then fail "sink accepted 10.0.0.1"; fi
say "ok: refusals (unknown mode, bad lab name, outside netns, non-lab addresses)"

# --- lab up ---
lab_built=1
LAB_PROBE=$PROBE "$LABSH" up >"$TMP/env" || fail "lab.sh up"
eval "$(cat "$TMP/env")"
eval "$("$LABSH" env)"
for v in LAB HV_NS VM1_NS VM2_NS EXT_NS EXT2_NS VM1_PORT VM2_PORT EXT_PORT EXT2_PORT BRIDGE \
	VM1_IP VM2_IP EXT_IP EXT2_IP VM1_IP6 VM2_IP6 EXT_IP6 EXT2_IP6 VM1_MAC VM2_MAC; do
	[[ -n ${!v:-} ]] || fail "lab.sh env did not set $v"
done
if LAB_PROBE=$PROBE "$LABSH" up >/dev/null 2>"$TMP/up2.err"; then fail "second up was accepted"; fi
grep -q "already exists" "$TMP/up2.err" || fail "second up: $(cat "$TMP/up2.err")"
ip netns exec "$HV_NS" ip -br link show master "$BRIDGE" >"$TMP/members" || fail "ip link show master $BRIDGE"
grep -q "^$VM1_PORT" "$TMP/members" || fail "$VM1_PORT is not in $BRIDGE: $(cat "$TMP/members")"
say "ok: lab $LAB up ($VM1_PORT, $VM2_PORT, $EXT_PORT, $EXT2_PORT on $BRIDGE in $HV_NS)"

# --- 1. UDP at maximum rate, 250-byte frames, 5 s ---
bg "$EXT_NS" "$TMP/s1.json" "$TMP/s1.err" "$SINK" --listen "$EXT_IP:9" --duration 0 --start-after-first --idle-stop 500ms --interval 0 --json
sp=$LAST_BG
wait_for "$TMP/s1.err" listening
ip netns exec "$VM1_NS" "$FLOOD" --dst "$EXT_IP" --duration 5s --json >"$TMP/f1.json" || fail "flood max rate"
wait "$sp" || fail "sink (max rate)"
sent=$(jnum sent "$TMP/f1.json") fpps=$(jnum pps "$TMP/f1.json")
got=$(jnum total_packets "$TMP/s1.json") spps=$(jnum pps "$TMP/s1.json")
say "max rate: flood sent $sent (${fpps%.*} pps), sink received $got (${spps%.*} pps)"
ge "$fpps" 20000 || fail "flood reached only $fpps pps"
ge "$got" "$(awk -v s="$sent" 'BEGIN { print s * 0.95 }')" || fail "sink received $got of $sent"
MAX_PPS=${fpps%.*} MAX_RECV=${spps%.*}

# --- 2. paced 5000 pps for 10 s; sink measures 8 s from the first packet ---
bg "$EXT_NS" "$TMP/s2.json" "$TMP/s2.err" "$SINK" --listen "$EXT_IP:9" --duration 8s --start-after-first --interval 2s --json
sp=$LAST_BG
wait_for "$TMP/s2.err" listening
ip netns exec "$VM1_NS" "$FLOOD" --dst "$EXT_IP" --pps 5000 --duration 10s --json >"$TMP/f2.json" || fail "flood paced"
wait "$sp" || fail "sink (paced)"
fpps=$(jnum pps "$TMP/f2.json") spps=$(jnum pps "$TMP/s2.json")
say "paced 5000: flood offered $fpps pps, sink measured $spps pps"
within "$fpps" 5000 1 || fail "flood offered $fpps pps, want 5000 +-1%"
within "$spps" 5000 1 || fail "sink measured $spps pps, want 5000 +-1%"
PACED=$spps

# --- 3. IPv6 UDP, paced: every datagram arrives ---
bg "$EXT_NS" "$TMP/s3.json" "$TMP/s3.err" "$SINK" --listen "[$EXT_IP6]:9" --duration 0 --start-after-first --idle-stop 500ms --interval 0 --json
sp=$LAST_BG
wait_for "$TMP/s3.err" listening
ip netns exec "$VM2_NS" "$FLOOD" --dst "$EXT_IP6" --pps 2000 --duration 1s --size 500 --json >"$TMP/f3.json" || fail "flood IPv6"
wait "$sp" || fail "sink (IPv6)"
sent=$(jnum sent "$TMP/f3.json") got=$(jnum total_packets "$TMP/s3.json") bytes=$(jnum total_bytes "$TMP/s3.json")
[[ $sent == "$got" ]] || fail "IPv6: sent $sent, received $got"
[[ $bytes == $((got * (500 - 14 - 40 - 8))) ]] || fail "IPv6: $bytes payload bytes for $got datagrams of 500-byte frames"
say "ok: IPv6 UDP $sent sent, $got received, frame size exact"

# --- 4. SYN flood: counted by nft on ext's ingress, checksums checked by tcpdump and the kernel ---
ip netns exec "$EXT_NS" nft -f - <<'EOF' || fail "nft counter"
table netdev selftest {
	chain in {
		type filter hook ingress device "eth0" priority 0;
		tcp dport 9 tcp flags & (syn | ack) == syn counter
	}
}
EOF
tcp_stat() { ip netns exec "$EXT_NS" awk -v k="$1" '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == k) c = i; h = 1 } else print $c }' /proc/net/snmp; }
csum0=$(tcp_stat InCsumErrors) rst0=$(tcp_stat OutRsts)
bg "$EXT_NS" "$TMP/td.txt" "$TMP/td.err" timeout 20 tcpdump -n -vv -c 20 -i eth0 "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn and dst port 9"
tp=$LAST_BG
wait_for "$TMP/td.err" "listening on"
ip netns exec "$VM1_NS" "$FLOOD" --dst "$EXT_IP" --proto syn --dport 9 --pps 20000 --duration 3s --json >"$TMP/f4.json" || fail "SYN flood"
ip netns exec "$VM1_NS" "$FLOOD" --dst "$EXT_IP6" --proto syn --dport 9 --pps 5000 --duration 1s --json >"$TMP/f5.json" || fail "SYN flood IPv6"
wait "$tp" || fail "tcpdump saw fewer than 20 SYNs: $(cat "$TMP/td.err")"
sent=$(($(jnum sent "$TMP/f4.json") + $(jnum sent "$TMP/f5.json")))
counted=$(ip netns exec "$EXT_NS" nft list chain netdev selftest in | sed -n 's/.*counter packets \([0-9]*\).*/\1/p')
good=$(grep -c "Flags \[S\], cksum 0x[0-9a-f]* (correct)" "$TMP/td.txt" || true)
if grep -qi "incorrect\|bad cksum" "$TMP/td.txt"; then fail "tcpdump found bad checksums: $(grep -i 'incorrect\|bad cksum' "$TMP/td.txt" | head -2)"; fi
[[ $good -ge 20 ]] || fail "tcpdump: $good of 20 SYNs with correct checksums: $(head -4 "$TMP/td.txt")"
[[ $counted == "$sent" ]] || fail "nft counted $counted SYNs, flood sent $sent"
csum=$(($(tcp_stat InCsumErrors) - csum0)) rst=$(($(tcp_stat OutRsts) - rst0))
[[ $csum -eq 0 ]] || fail "ext's TCP counted $csum checksum errors"
[[ $rst -eq $sent ]] || fail "ext answered $rst RSTs to $sent SYNs (each valid SYN to a closed port gets one)"
say "ok: SYN $sent sent (IPv4+IPv6), nft counted $counted, 20/20 checksums correct, $rst RSTs, 0 checksum errors"
ip netns exec "$VM1_NS" "$FLOOD" --dst "$EXT_IP" --proto syn --duration 2s --json >"$TMP/f6.json" || fail "SYN flood max"
SYN_MAX=$(jnum pps "$TMP/f6.json")

# --- 5. probe: echo server in vm1, clients from ext ---
bg "$VM1_NS" /dev/null "$TMP/p.err" "$PROBE" server --listen "$VM1_IP:22"
ps4=$LAST_BG
wait_for "$TMP/p.err" listening
bg "$VM1_NS" /dev/null "$TMP/p6.err" "$PROBE" server --listen "[$VM1_IP6]:22"
ps6=$LAST_BG
wait_for "$TMP/p6.err" listening
ip netns exec "$EXT_NS" "$PROBE" client --connect "$VM1_IP:22" --count 50 --interval 20ms --timeout 2s --json >"$TMP/c1.json" ||
	fail "probe client: $(cat "$TMP/c1.json")"
[[ $(jnum completed "$TMP/c1.json") == 50 && $(jnum failed "$TMP/c1.json") == 0 ]] || fail "probe: $(cat "$TMP/c1.json")"
ip netns exec "$EXT2_NS" "$PROBE" client --connect "[$VM1_IP6]:22" --count 10 --interval 10ms --new-conn --json >"$TMP/c2.json" ||
	fail "probe client --new-conn: $(cat "$TMP/c2.json")"
if ip netns exec "$EXT_NS" "$PROBE" client --connect "$VM2_IP:22" --count 2 --connect-timeout 1s >/dev/null 2>&1; then
	fail "probe client to a port without a server exited 0"
fi
say "ok: probe 50/50 round trips (p50 $(jnum p50_ms "$TMP/c1.json") ms, p99 $(jnum p99_ms "$TMP/c1.json") ms); --new-conn over IPv6 10/10"
PROBE_P50=$(jnum p50_ms "$TMP/c1.json")
kill "$ps4" "$ps6"
wait "$ps4" "$ps6" || fail "probe server did not exit cleanly on SIGTERM"
BG=()

# --- down: nothing of this lab is left ---
"$LABSH" down || fail "lab.sh down"
lab_built=0
for ns in "$HV_NS" "$VM1_NS" "$VM2_NS" "$EXT_NS" "$EXT2_NS"; do
	if ip netns list | awk '{print $1}' | grep -qxF "$ns"; then fail "$ns survived down"; fi
done
"$LABSH" down || fail "second down (nothing to remove) failed"
say "ok: lab $LAB down, no namespace left"
say "summary: UDP 250 B max $MAX_PPS pps offered / $MAX_RECV pps received; paced 5000 -> $PACED pps; SYN max ${SYN_MAX%.*} pps; probe p50 $PROBE_P50 ms"
