#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, demo and test shaperd:
# the kernel tools the lab and the splice use, and the Go modules. Safe to run
# again: it installs only what is missing.
set -euo pipefail
need=()
command -v ip >/dev/null       || need+=(iproute2)
command -v tc >/dev/null       || need+=(iproute2)
command -v nft >/dev/null      || need+=(nftables)
command -v ethtool >/dev/null  || need+=(ethtool)
command -v tcpdump >/dev/null  || need+=(tcpdump)
command -v tmux >/dev/null     || need+=(tmux)
command -v iperf3 >/dev/null   || need+=(iperf3)
command -v ovs-vsctl >/dev/null || need+=(openvswitch-switch)
command -v systemd-analyze >/dev/null || need+=(systemd)
# The monitoring chain (integration/monitoring_test.go, docs/monitoring.md):
# Debian's Prometheus 2.42 (with promtool), Alertmanager 0.25 (with amtool)
# and node_exporter 1.5. The test runs instances of its own in the lab's
# namespaces; the packages' services must not run on the host.
mon=()
command -v prometheus >/dev/null || mon+=(prometheus)
command -v promtool >/dev/null   || mon+=(prometheus)
command -v prometheus-alertmanager >/dev/null || mon+=(prometheus-alertmanager)
command -v amtool >/dev/null     || mon+=(prometheus-alertmanager)
command -v prometheus-node-exporter >/dev/null || mon+=(prometheus-node-exporter)
mon=($(printf '%s\n' ${mon[@]+"${mon[@]}"} | sort -u))
need+=(${mon[@]+"${mon[@]}"})
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# The monitoring packages' maintainer scripts start their services
	# (Prometheus on :9090, Alertmanager on :9093, node_exporter on :9100)
	# and enable them at boot. The tests need the binaries only, so the
	# services are kept from ever starting: a policy-rc.d that refuses
	# every start (exit 101, which invoke-rc.d and deb-systemd-invoke both
	# obey) stands during the install, so nothing binds those ports even
	# for a moment, which stopping them afterwards could not promise; then
	# they are disabled, so a reboot does not start them either. An
	# existing policy-rc.d (a container's) is the admin's and is left as
	# it is. Only the packages installed here are disabled: monitoring
	# that was already on the machine is not touched.
	policy=/usr/sbin/policy-rc.d
	ours=
	if [ ${#mon[@]} -gt 0 ] && [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# shaperd scripts/deps.sh: no service starts during this install\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		ours=1
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	if [ -n "$ours" ]; then
		rm -f "$policy"
		trap - EXIT
	fi
	for pkg in ${mon[@]+"${mon[@]}"}; do
		if [ -d /run/systemd/system ]; then
			systemctl disable --now "$pkg.service" >/dev/null 2>&1 || true
		elif [ -x "/etc/init.d/$pkg" ]; then
			update-rc.d "$pkg" disable >/dev/null 2>&1 || true
		fi
	done
fi
if ! command -v go >/dev/null; then
	echo "deps: Go is not on PATH (expected /usr/local/go/bin)" >&2
	exit 1
fi
go mod download
