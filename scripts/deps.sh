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
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v go >/dev/null; then
	echo "deps: Go is not on PATH (expected /usr/local/go/bin)" >&2
	exit 1
fi
go mod download
