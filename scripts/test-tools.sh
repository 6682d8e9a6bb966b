#!/usr/bin/env bash
# test-tools.sh installs what deploy's tests run besides PostgreSQL (which
# scripts/pg.sh installs): Caddy, the TLS proxy of deploy/compose.yaml, and
# systemd-analyze, which verifies deploy/systemd/tablecast.service. Each is
# installed from Debian's packages only when missing.
#
#   scripts/test-tools.sh install
set -euo pipefail

die() {
	echo "test-tools.sh: $*" >&2
	exit 1
}

install() {
	local missing=()
	command -v caddy >/dev/null || missing+=(caddy)
	command -v systemd-analyze >/dev/null || missing+=(systemd)
	[[ ${#missing[@]} -eq 0 ]] && return
	command -v apt-get >/dev/null || die "${missing[*]} not found and apt-get is unavailable: install them, or deploy's tests skip what needs them (and fail under CI=true)"
	local sudo=()
	if [[ $EUID -ne 0 ]]; then
		command -v sudo >/dev/null || die "${missing[*]} not found: run this as root, or install the packages"
		sudo=(sudo)
	fi
	echo "test-tools.sh: installing ${missing[*]} (Debian packages) for deploy's tests..." >&2
	"${sudo[@]}" apt-get update -qq >&2
	# policy-rc.d or no init: the packages' services are not started.
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

case "${1:-}" in
install) install ;;
*)
	echo "usage: $0 install" >&2
	exit 2
	;;
esac
