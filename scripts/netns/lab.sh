#!/usr/bin/env bash
# lab.sh: build, describe and tear down a shaperd test lab in network
# namespaces. Nothing is created in the initial namespace.
#
#   LAB=hlp1 scripts/netns/lab.sh up   [bridge|ovs]   build; prints the env assignments
#   LAB=hlp1 scripts/netns/lab.sh env  [bridge|ovs]   print shell assignments (eval "$(...)")
#   LAB=hlp1 scripts/netns/lab.sh down [bridge|ovs]   remove the lab's namespaces (and its OVS)
#
# Layout (every name below is prefixed with "$LAB-" only at namespace level;
# interfaces live inside the lab's own namespaces, so their names are fixed):
#
#   $LAB-vm1  eth0 198.18.0.11/24  2001:2::11/64  ─┐
#   $LAB-vm2  eth0 198.18.0.12/24  2001:2::12/64  ─┤ veth    $LAB-hv: bridge br0 with
#   $LAB-ext  eth0 198.18.0.100/24 2001:2::100/64 ─┤ pairs   ports vm-1-00c9, vm-2-00c9,
#   $LAB-ext2 eth0 198.18.0.101/24 2001:2::101/64 ─┘         ext-00c9, ext2-00c9
#
# Mode ovs: br0 is an Open vSwitch bridge with the userspace datapath
# (datapath_type=netdev) instead, run by a private ovsdb-server and
# ovs-vswitchd (scripts/netns/ovs.sh) started inside $LAB-hv: that datapath
# opens the ports by name in its own namespace. Each port's Interface row has
# external_ids:attached-mac (the guest's MAC), as libvirt sets it. `down`
# stops that OVS. `env` adds OVS_RUNDIR, OVS_DBDIR, OVS_LOGDIR and
# OVS_BRIDGE: export them for every ovs-* command (and shaperd run) meant for
# this lab's OVS.
#
# Environment:
#   LAB         namespace prefix (default for up: shl$$; required for env/down).
#               Letters, digits and _ only, at most 12 characters; 5 recommended.
#   LAB_VLAN=1  bridge vlan_filtering on; every port is an untagged member of
#               VLAN 100 with pvid 100 (VLAN 1 removed), so guests stay untagged.
#   LAB_PROBE   path to a built probe binary, used for the reachability check
#               when `ping` is not installed (else it is built with go build).
#   LAB_OVS_DIR (ovs) the private OVS's directory: database, sockets, pidfiles,
#               logs; absolute, at most 80 characters. Default
#               /run/shaperd-ovs/$LAB. Pass the same value to up, env and down.
#
# Addresses are from 198.18.0.0/15 (RFC 2544) and 2001:2::/48 (RFC 5180) only.
set -euo pipefail

readonly SUBNET4=198.18.0.0/24 SUBNET6=2001:2::/64 VLAN_ID=100
readonly GUESTS="vm1 vm2 ext ext2"

die() { echo "lab.sh: $*" >&2; exit 1; }
log() { echo "lab.sh: $*" >&2; }

usage() {
	cat >&2 <<'EOF'
usage: LAB=name scripts/netns/lab.sh up|down|env [bridge|ovs]
  up    build the lab (refuses if its namespaces exist); prints env assignments
  env   print shell assignments for a built lab: eval "$(LAB=name lab.sh env)"
  down  delete the lab's namespaces (and end processes left inside them)
modes: bridge (default): a Linux bridge; ovs: an Open vSwitch bridge with the
userspace datapath, run by a private OVS that up starts and down stops.
EOF
	exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
cmd=$1
mode=${2:-bridge}
case $mode in
bridge | ovs) ;;
*) die "unknown mode '$mode'; use bridge or ovs" ;;
esac
case $cmd in
up) LAB=${LAB:-shl$$} ;;
down | env) [[ -n ${LAB:-} ]] || die "$cmd: set LAB to the lab's prefix (the one 'up' printed)" ;;
*) usage ;;
esac
[[ $LAB =~ ^[A-Za-z0-9_]{1,12}$ ]] || die "LAB='$LAB': use 1-12 letters, digits or _ (5 recommended)"
[[ $(id -u) -eq 0 ]] || die "must run as root"

HV_NS=$LAB-hv
OVS_DIR=${LAB_OVS_DIR:-/run/shaperd-ovs/$LAB}
OVS_SH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/ovs.sh
ns_of() { echo "$LAB-$1"; }
ALL_NS="$HV_NS $(for g in $GUESTS; do ns_of "$g"; done)"

# Per-guest facts: port name in hv, IPv4, IPv6, MAC (locally administered).
port_of() { case $1 in vm1) echo vm-1-00c9 ;; vm2) echo vm-2-00c9 ;; ext) echo ext-00c9 ;; ext2) echo ext2-00c9 ;; esac; }
ip4_of() { case $1 in vm1) echo 198.18.0.11 ;; vm2) echo 198.18.0.12 ;; ext) echo 198.18.0.100 ;; ext2) echo 198.18.0.101 ;; esac; }
ip6_of() { case $1 in vm1) echo 2001:2::11 ;; vm2) echo 2001:2::12 ;; ext) echo 2001:2::100 ;; ext2) echo 2001:2::101 ;; esac; }
mac_of() { case $1 in vm1) echo 02:c6:12:00:00:11 ;; vm2) echo 02:c6:12:00:00:12 ;; ext) echo 02:c6:12:00:01:00 ;; ext2) echo 02:c6:12:00:01:01 ;; esac; }

ns_exists() { [[ -e /run/netns/$1 ]] || ip netns list | awk '{print $1}' | grep -qxF -- "$1"; }

# sysctl_ns NS KEY VALUE [KEY VALUE ...]: write /proc/sys inside NS (net.*
# is per namespace), all in one process; it fails at the first failed write.
sysctl_ns() {
	local ns=$1 script="set -e;"
	shift
	while (($# >= 2)); do
		script+=" echo $2 > /proc/sys/${1//.//};"
		shift 2
	done
	ip netns exec "$ns" sh -c "$script"
}

# ---------------------------------------------------------------- down
# Remove exactly this lab's namespaces; processes still inside them (tools a
# test left running) are ended by PID first, or the namespace would linger.
teardown() {
	local ns pids left=
	# The lab's OVS first (a clean exit), if it has one; whatever else runs
	# in the namespaces is ended below.
	if [[ -e $OVS_DIR/ovs-vswitchd.pid || -e $OVS_DIR/ovsdb-server.pid ]]; then
		"$OVS_SH" stop "$OVS_DIR" || log "could not stop the OVS in $OVS_DIR"
		if [[ -z ${LAB_OVS_DIR:-} ]]; then
			rm -rf -- "$OVS_DIR"
			rmdir /run/shaperd-ovs 2>/dev/null || true
		fi
	fi
	for ns in $ALL_NS; do
		ns_exists "$ns" || continue
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		if [[ -n $pids ]]; then
			log "ending processes left in $ns: $(echo $pids)"
			kill $pids 2>/dev/null || true
			for _ in 1 2 3 4 5 6 7 8 9 10; do
				pids=$(ip netns pids "$ns" 2>/dev/null || true)
				[[ -z $pids ]] && break
				sleep 0.2
			done
			[[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
		fi
		ip netns delete "$ns" 2>/dev/null || log "could not delete $ns"
	done
	for ns in $ALL_NS; do
		ns_exists "$ns" && left+=" $ns"
	done
	[[ -z $left ]] || die "namespaces still present:$left"
	return 0
}

# ---------------------------------------------------------------- env
print_env() {
	local g G mac vlan=0
	for ns in $ALL_NS; do
		ns_exists "$ns" || die "env: namespace $ns does not exist; run: LAB=$LAB $0 up"
	done
	if [[ $(ip netns exec "$HV_NS" cat /sys/class/net/br0/bridge/vlan_filtering 2>/dev/null) == 1 ]]; then vlan=1; fi
	local lmode=bridge
	ip netns exec "$HV_NS" test -e /sys/class/net/br0/bridge || lmode=ovs
	printf 'LAB=%q\nLAB_MODE=%s\nLAB_VLAN=%s\n' "$LAB" "$lmode" "$vlan"
	[[ $vlan == 1 ]] && printf 'VLAN_ID=%s\n' "$VLAN_ID"
	printf 'HV_NS=%q\nBRIDGE=br0\nSUBNET4=%s\nSUBNET6=%s\n' "$HV_NS" "$SUBNET4" "$SUBNET6"
	if [[ $lmode == ovs ]]; then
		[[ -e $OVS_DIR/db.sock ]] || die "env: the lab's OVS is not running in $OVS_DIR (set LAB_OVS_DIR as for up)"
		printf 'OVS_BRIDGE=br0\n'
		"$OVS_SH" env "$OVS_DIR"
	fi
	for g in $GUESTS; do
		G=${g^^}
		mac=$(ip netns exec "$(ns_of "$g")" cat /sys/class/net/eth0/address)
		printf '%s_NS=%q\n%s_PORT=%s\n%s_IF=eth0\n%s_IP=%s\n%s_IP6=%s\n%s_MAC=%s\n' \
			"$G" "$(ns_of "$g")" "$G" "$(port_of "$g")" "$G" "$G" "$(ip4_of "$g")" \
			"$G" "$(ip6_of "$g")" "$G" "$mac"
	done
}

# ---------------------------------------------------------------- up
PING_BIN=
TMPBIN=
created=()

up_cleanup() {
	local rc=$?
	[[ -n $TMPBIN ]] && rm -rf -- "$TMPBIN"
	if [[ $rc -ne 0 && ${#created[@]} -gt 0 ]]; then
		log "up failed (exit $rc); removing what it built: ${created[*]}"
		ALL_NS="${created[*]}"
		teardown || true
	fi
	exit $rc
}

# lab_ping NS DST: one echo, with up to 5 tries (links may still be settling).
lab_ping() {
	local i
	for i in 1 2 3 4 5; do
		if [[ $PING_BIN == ping ]]; then
			ip netns exec "$1" ping -n -q -c 1 -W 1 "$2" >/dev/null 2>&1 && return 0
		else
			ip netns exec "$1" "$PING_BIN" ping --dst "$2" --count 1 --timeout 1s >/dev/null 2>&1 && return 0
		fi
		sleep 0.2
	done
	return 1
}

find_pinger() {
	if [[ -n ${LAB_PROBE:-} ]]; then
		[[ -x $LAB_PROBE ]] || die "LAB_PROBE=$LAB_PROBE is not executable"
		PING_BIN=$LAB_PROBE
	elif command -v ping >/dev/null 2>&1; then
		PING_BIN=ping
	else
		command -v go >/dev/null 2>&1 || die "neither ping nor go is installed; set LAB_PROBE to a built probe binary"
		TMPBIN=$(mktemp -d "${TMPDIR:-/tmp}/lab-$LAB.XXXXXX")
		local root
		root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
		log "ping not installed; building probe for the reachability check"
		(cd "$root" && go build -o "$TMPBIN/probe" ./scripts/netns/probe) || die "go build probe failed"
		PING_BIN=$TMPBIN/probe
	fi
}

setup_ns() { # setup_ns NS: create, lo up, no IPv6 DAD or RA noise
	local ns=$1
	ip netns add "$ns"
	created+=("$ns")
	ip -n "$ns" link set lo up
	local k kv=()
	for k in all default; do
		kv+=(net.ipv6.conf.$k.accept_dad 0 net.ipv6.conf.$k.accept_ra 0 net.ipv6.conf.$k.router_solicitations 0)
	done
	sysctl_ns "$ns" "${kv[@]}"
}

# port_frames: the frames every hypervisor port has seen so far, summed,
# read by one process in the hypervisor namespace.
port_frames() {
	local g files=()
	for g in $GUESTS; do
		files+=("/sys/class/net/$(port_of "$g")/statistics/rx_packets" "/sys/class/net/$(port_of "$g")/statistics/tx_packets")
	done
	ip netns exec "$HV_NS" awk '{ sum += $1 } END { print sum }' "${files[@]}"
}

# settle: wait until the lab stops changing by itself, so that nothing is
# measured or snapshotted while it does. The bridge gains carrier, and its
# ports reach the forwarding state, a moment after they come up; and the
# guests' kernels send IPv6 multicast listener reports (MLD) after link-up
# (within 10 ms, see bring_up; a second or two by default). Quiet means no frame on any port for 1.5 s; give up
# after 15 s.
settle() {
	local g i state last now since deadline t
	if [[ $mode == bridge ]]; then
		# One process reads br0's carrier and each port's STP state:
		# "1 3 3 3 3" is carrier and every port forwarding (reading the
		# carrier of a bridge without it fails).
		local files=(/sys/class/net/br0/carrier) want=1
		for g in $GUESTS; do
			files+=("/sys/class/net/$(port_of "$g")/brport/state")
			want+=" 3"
		done
		for i in $(seq 100); do
			state=$(ip netns exec "$HV_NS" cat "${files[@]}" 2>/dev/null | tr '\n' ' ' || true)
			[[ $state == "$want " ]] && break
			sleep 0.1
		done
		[[ $state == "$want " ]] || die "the bridge br0 has no carrier, or a port is not forwarding, 10 s after up"
	fi
	# Quiet is timed by the clock (microseconds: EPOCHREALTIME without its
	# locale's decimal separator), not by counting polls: a reading (a
	# process) takes time too. Conservatively: from after the reading that
	# saw the last change to before the reading that still sees no other.
	last=$(port_frames)
	since=${EPOCHREALTIME//[^0-9]/}
	deadline=$((since + 15000000))
	while :; do
		sleep 0.1
		t=${EPOCHREALTIME//[^0-9]/}
		now=$(port_frames)
		if [[ $now != "$last" ]]; then
			last=$now since=${EPOCHREALTIME//[^0-9]/}
		elif ((t - since >= 1500000)); then
			return 0
		fi
		((t < deadline)) || break
	done
	die "the lab is not quiet: its ports still see frames 15 s after up"
}

bring_up() {
	local ns g gns port vlan_filtering=0 need
	for ns in $ALL_NS; do
		if ns_exists "$ns"; then
			die "namespace $ns already exists: lab '$LAB' is up (or half built). Tear it down with: LAB=$LAB $0 down"
		fi
	done
	[[ ${LAB_VLAN:-0} == 1 ]] && vlan_filtering=1
	[[ $mode == ovs && $vlan_filtering == 1 ]] && die "LAB_VLAN=1 is for the bridge mode only"
	if [[ $mode == ovs ]]; then
		for need in ovs-vsctl ovs-vswitchd ovsdb-server; do
			command -v $need >/dev/null || die "mode ovs: $need not found; install openvswitch-switch (scripts/deps.sh does)"
		done
	fi
	for need in ethtool; do command -v $need >/dev/null || log "$need not found; skipping offload settings"; done
	find_pinger

	trap up_cleanup EXIT
	trap 'exit 130' INT TERM

	log "building lab '$LAB' ($mode mode, vlan_filtering=$vlan_filtering)"
	setup_ns "$HV_NS"
	# The hypervisor needs no IPv6 at all: keep its ports silent.
	sysctl_ns "$HV_NS" net.ipv6.conf.all.disable_ipv6 1 net.ipv6.conf.default.disable_ipv6 1
	if [[ $mode == ovs ]]; then
		"$OVS_SH" start "$OVS_DIR" "$HV_NS"
		eval "$("$OVS_SH" env "$OVS_DIR" | sed 's/^/export /')"
		# The bridge's own (LOCAL) port stays down: the hypervisor takes no part.
		ovs-vsctl --timeout=10 add-br br0 -- set Bridge br0 datapath_type=netdev
	else
		ip -n "$HV_NS" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
	fi
	if [[ $vlan_filtering == 1 ]]; then
		ip netns exec "$HV_NS" test -e /sys/class/net/br0/bridge/vlan_filtering ||
			die "LAB_VLAN=1: this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING is off); run without LAB_VLAN"
		ip -n "$HV_NS" link set br0 type bridge vlan_filtering 1
	fi

	for g in $GUESTS; do
		gns=$(ns_of "$g")
		port=$(port_of "$g")
		setup_ns "$gns"
		ip -n "$HV_NS" link add "$port" txqueuelen 10000 type veth peer name eth0 netns "$gns"
		ip -n "$gns" link set eth0 address "$(mac_of "$g")" txqueuelen 10000
		# The unsolicited MLD reports that follow link-up (each sent twice,
		# at random within mldv2_unsolicited_report_interval, 1 s by
		# default) go out at once: settle then waits out its quiet time only.
		sysctl_ns "$gns" net.ipv6.conf.eth0.accept_dad 0 net.ipv6.conf.eth0.mldv2_unsolicited_report_interval 10
		ip -n "$gns" addr add "$(ip4_of "$g")/24" dev eth0
		ip -n "$gns" addr add "$(ip6_of "$g")/64" dev eth0 nodad
		if [[ $mode == ovs ]]; then
			ovs-vsctl --timeout=10 add-port br0 "$port" -- \
				set Interface "$port" external_ids:attached-mac="\"$(mac_of "$g")\""
		else
			ip -n "$HV_NS" link set "$port" master br0
		fi
		if [[ $vlan_filtering == 1 ]]; then
			ip netns exec "$HV_NS" bridge vlan add dev "$port" vid "$VLAN_ID" pvid untagged
			ip netns exec "$HV_NS" bridge vlan del dev "$port" vid 1
		fi
		if command -v ethtool >/dev/null; then
			ip netns exec "$gns" ethtool -K eth0 tx off >/dev/null 2>&1 || true
			ip netns exec "$HV_NS" ethtool -K "$port" tx off >/dev/null 2>&1 || true
		fi
		ip -n "$HV_NS" link set "$port" up
		ip -n "$gns" link set eth0 up
	done
	[[ $mode == ovs ]] || ip -n "$HV_NS" link set br0 up

	# Reachability (vm1 -> ext must work), which also fills the neighbour
	# tables of every VM <-> external pair so floods start without ARP/ND.
	lab_ping "$(ns_of vm1)" "$(ip4_of ext)" || die "vm1 cannot ping ext ($(ip4_of ext))"
	lab_ping "$(ns_of vm1)" "$(ip6_of ext)" || die "vm1 cannot ping ext over IPv6 ($(ip6_of ext))"
	local src dst
	for src in vm1 vm2; do
		for dst in ext ext2 vm1 vm2; do
			[[ $src == "$dst" ]] && continue
			lab_ping "$(ns_of "$src")" "$(ip4_of "$dst")" || die "$src cannot ping $dst ($(ip4_of "$dst"))"
			lab_ping "$(ns_of "$src")" "$(ip6_of "$dst")" || die "$src cannot ping $dst ($(ip6_of "$dst"))"
		done
	done
	settle
	log "lab '$LAB' is up; tear down with: LAB=$LAB $0 down"
	print_env
	created=() # success: nothing to undo
}

case $cmd in
up) bring_up ;;
env) print_env ;;
down)
	teardown
	log "lab '$LAB' is down"
	;;
esac
