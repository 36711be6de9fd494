#!/usr/bin/env bash
# ovs.sh: a private Open vSwitch (one ovsdb-server, one ovs-vswitchd with the
# userspace datapath in mind) for a test lab, without systemd.
#
#   scripts/netns/ovs.sh start DIR [NETNS]   start both daemons (idempotent)
#   scripts/netns/ovs.sh stop  DIR           stop them (idempotent)
#   scripts/netns/ovs.sh env   DIR           print the OVS_* assignments for DIR
#
# DIR holds everything: conf.db, db.sock, pidfiles, logs, the bridges' .mgmt
# sockets. Export the assignments `env` prints for every ovs-* command
# (ovs-vsctl, ovs-ofctl, shaperd run) that should talk to this instance.
#
# NETNS: ovs-vswitchd opens the userspace datapath's netdevs by name in the
# namespace it runs in, so start it inside the namespace holding the ports
# (both daemons run there, and `ip netns pids` finds them).
#
# stop ends only processes whose pidfile is in DIR and whose command line
# names DIR: never an OVS this script did not start.
set -euo pipefail

die() { echo "ovs.sh: $*" >&2; exit 1; }
log() { echo "ovs.sh: $*" >&2; }

[[ $# -ge 2 && $# -le 3 ]] || die "usage: ovs.sh start DIR [NETNS] | stop DIR | env DIR"
cmd=$1
dir=$2
ns=${3:-}
[[ $dir == /* ]] || die "DIR must be an absolute path, got '$dir'"
# The bridges' OpenFlow sockets are DIR/BRIDGE.mgmt: unix socket paths are
# limited to 107 bytes.
[[ ${#dir} -le 80 ]] || die "DIR '$dir' is too long for unix socket paths (at most 80 characters)"
schema=/usr/share/openvswitch/vswitch.ovsschema
# Both daemons run at nice -10, as Debian's ovs-ctl starts them
# (--ovs-vswitchd-priority, --ovsdb-server-priority): the userspace datapath
# forwards in ovs-vswitchd's own threads, which compete with the lab's
# traffic generators for the CPUs.
nice=${OVS_NICE:--10}

export OVS_RUNDIR=$dir OVS_DBDIR=$dir OVS_LOGDIR=$dir

# The daemons outlive this script: they must not inherit its descriptors
# beyond stdio, such as a caller's flock on /tmp/shaperd-netns.lock (the lock
# would be held until OVS stops) or a test harness's output pipe.
for fd in /proc/$$/fd/*; do
	fd=${fd##*/}
	[[ $fd =~ ^[0-9]+$ && $fd -gt 2 ]] || continue
	eval "exec $fd>&-" 2>/dev/null || true
done

# ours PIDFILE: the pid in PIDFILE if that process is alive and names DIR.
ours() {
	local pid
	[[ -r $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir" || return 1
	echo "$pid"
}

in_ns() {
	if [[ -n $ns ]]; then
		ip netns exec "$ns" "$@"
	else
		"$@"
	fi
}

start() {
	local i
	for bin in ovsdb-tool ovsdb-server ovs-vswitchd ovs-vsctl; do
		command -v $bin >/dev/null || die "$bin not found: install openvswitch-switch (scripts/deps.sh does)"
	done
	[[ -r $schema ]] || die "no OVS schema at $schema"
	[[ $(id -u) -eq 0 ]] || die "must run as root"
	if [[ -n $ns ]]; then
		[[ -e /run/netns/$ns ]] || die "namespace $ns does not exist"
	fi
	mkdir -p -m 0700 -- "$dir"
	if ! ours "$dir/ovsdb-server.pid" >/dev/null; then
		[[ -e $dir/conf.db ]] || ovsdb-tool create "$dir/conf.db" "$schema"
		in_ns nice -n "$nice" ovsdb-server "$dir/conf.db" --remote="punix:$dir/db.sock" \
			--pidfile="$dir/ovsdb-server.pid" --log-file="$dir/ovsdb-server.log" --no-chdir -vconsole:off --detach </dev/null
		ovs-vsctl --timeout=10 --no-wait init
	fi
	if ! ours "$dir/ovs-vswitchd.pid" >/dev/null; then
		in_ns nice -n "$nice" ovs-vswitchd "unix:$dir/db.sock" \
			--pidfile="$dir/ovs-vswitchd.pid" --log-file="$dir/ovs-vswitchd.log" --no-chdir -vconsole:off --detach </dev/null
	fi
	# Ready when vswitchd answers on its control socket.
	for i in $(seq 50); do
		ovs-appctl -t ovs-vswitchd version >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "ovs-vswitchd in $dir did not come up; see $dir/ovs-vswitchd.log"
}

# running PID: PID is a process that has not exited and names DIR. A
# daemon that exited stays a zombie until init reaps it (--detach made init
# its parent), which takes up to seconds on some machines: a zombie has
# closed every descriptor and socket, and has an empty command line.
running() {
	[[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$dir"
}

stop() {
	local name pid i
	for name in ovs-vswitchd ovsdb-server; do
		pid=$(ours "$dir/$name.pid") || continue
		kill -TERM "$pid" 2>/dev/null || true
		for i in $(seq 50); do
			running "$pid" || break
			sleep 0.1
		done
		if running "$pid"; then
			log "$name ($pid) ignored SIGTERM; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	return 0
}

case $cmd in
start) start ;;
stop) stop ;;
env) printf 'OVS_RUNDIR=%q\nOVS_DBDIR=%q\nOVS_LOGDIR=%q\n' "$dir" "$dir" "$dir" ;;
*) die "unknown command '$cmd'" ;;
esac
