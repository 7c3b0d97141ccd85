#!/usr/bin/env bash
# deb-test.sh [PACKAGE.deb] — install the Debian package on this machine and
# check what it promises; needs root (CI runs it after the Go tests).
# Without an argument it builds the package with scripts/deb.sh first.
#
# It installs the package with dpkg -i and checks the files and their modes,
# the conffile, the postie system user, /var/lib/postie (0700, postie's),
# the unit with systemd-analyze verify (and that the check can fail), that
# the installed postie runs, then dpkg -r (the mail stays) and dpkg --purge
# (the mail is gone). It removes the package at the end, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "deb-test.sh: run as root (it installs a package)" >&2
	exit 1
fi
deb=${1:-}
if [ -z "$deb" ]; then
	deb=$(scripts/deb.sh)
fi
deb=$(readlink -f "$deb")

fails=0
ok() { echo "ok    $*"; }
fail() {
	echo "FAIL  $*"
	fails=$((fails + 1))
}
check() { # check DESCRIPTION COMMAND...
	local what=$1
	shift
	if "$@"; then ok "$what"; else fail "$what"; fi
}
mode_owner() { stat -c '%a %U:%G' "$1" 2>/dev/null || echo missing; }
expect_mode() { # expect_mode PATH "MODE USER:GROUP"
	local got
	got=$(mode_owner "$1")
	if [ "$got" = "$2" ]; then ok "$1 is $2"; else fail "$1 is $got, want $2"; fi
}

if dpkg-query -W postie >/dev/null 2>&1; then
	echo "deb-test.sh: a postie package is installed already; remove it first (dpkg --purge postie)" >&2
	exit 1
fi
if [ -e /var/lib/postie ]; then
	echo "deb-test.sh: /var/lib/postie exists already (someone's mail?); move it away first" >&2
	exit 1
fi
cleanup() { dpkg --purge postie >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== dpkg -i $deb"
dpkg -i "$deb"
version=$(dpkg-deb -f "$deb" Version)

echo "== files"
expect_mode /usr/bin/postie "755 root:root"
expect_mode /usr/lib/systemd/system/postie.service "644 root:root"
expect_mode /etc/postie/postie.toml "644 root:root"
expect_mode /usr/share/man/man8/postie.8.gz "644 root:root"
check "postie.toml is a conffile" grep -q '^ /etc/postie/postie.toml ' <(dpkg-query -W -f='${Conffiles}\n' postie)
check "postie.toml has the example's keys" grep -q '^data_dir = "/var/lib/postie"$' /etc/postie/postie.toml
check "postie help in the man page" sh -c 'zcat /usr/share/man/man8/postie.8.gz | grep -q "manage per-device passwords"'

echo "== the user and the data directory"
if entry=$(getent passwd postie); then
	ok "user postie exists: $entry"
	IFS=: read -r _ _ uid _ _ home shell <<<"$entry"
	sys_max=$(awk '$1 == "SYS_UID_MAX" {print $2}' /etc/login.defs)
	check "postie is a system user (uid $uid <= ${sys_max:-999})" test "$uid" -le "${sys_max:-999}"
	check "postie cannot log in (shell $shell)" test "$shell" = /usr/sbin/nologin
	check "postie's home is /var/lib/postie" test "$home" = /var/lib/postie
else
	fail "no user postie"
fi
check "group postie exists" sh -c "getent group postie >/dev/null"
expect_mode /var/lib/postie "700 postie:postie"

echo "== the unit"
unit=/usr/lib/systemd/system/postie.service
for want in "ExecStart=/usr/bin/postie serve -config /etc/postie/postie.toml" "User=postie" \
	"AmbientCapabilities=CAP_NET_BIND_SERVICE" "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" \
	"StateDirectory=postie" "NoNewPrivileges=yes" "ProtectSystem=strict"; do
	check "unit has $want" grep -qxF "$want" "$unit"
done
check "unit has no DynamicUser (the package's user owns the data)" sh -c "! grep -q '^DynamicUser' $unit"
# systemd-analyze verify exits 0 for unknown keys and bad values, so any
# output is a finding; and the check must be able to fail: the same unit
# with a bad value must draw a complaint, or the tool is not really
# looking (it needs no running systemd; --man=no skips the man page lookup
# of Documentation=, which is not installed in a container).
verify() { systemd-analyze verify --man=no "$@" 2>&1; }
out=$(verify "$unit") || out="$out (exit $?)"
if [ -z "$out" ]; then ok "systemd-analyze verify $unit: no complaints"; else fail "systemd-analyze verify $unit: $out"; fi
broken=$(mktemp -d)/postie.service
sed 's/^ProtectSystem=strict$/ProtectSystem=strictt/' "$unit" >"$broken"
out=$(verify "$broken") || true
if [[ $out == *strictt* ]]; then ok "systemd-analyze verify catches a bad value"; else fail "systemd-analyze verify did not notice ProtectSystem=strictt: the unit check above means nothing (output: $out)"; fi
rm -rf "$(dirname "$broken")"

echo "== postie runs"
out=$(/usr/bin/postie version 2>&1) || fail "postie version: $out"
check "postie version ($out) reports the package's build" test -n "$out" -a "$out" != "postie dev"
check "postie help" sh -c '/usr/bin/postie help | grep -q "Commands:"'
echo "   package version $version, binary: $out"

echo "== dpkg -r keeps the mail"
echo "a message" >/var/lib/postie/keep-me && chown postie:postie /var/lib/postie/keep-me
dpkg -r postie
check "binary removed" test ! -e /usr/bin/postie
check "unit removed" test ! -e "$unit"
check "/var/lib/postie kept" test -f /var/lib/postie/keep-me
check "the config kept (a conffile)" test -f /etc/postie/postie.toml

echo "== reinstall over the kept data, then dpkg --purge"
dpkg -i "$deb"
expect_mode /var/lib/postie "700 postie:postie"
check "the data survived the reinstall" test -f /var/lib/postie/keep-me
dpkg --purge postie
check "/var/lib/postie removed by purge" test ! -e /var/lib/postie
check "/etc/postie/postie.toml removed by purge" test ! -e /etc/postie/postie.toml
check "package gone" sh -c "! dpkg-query -W -f='\${Status}' postie 2>/dev/null | grep -q installed"

if [ "$fails" -gt 0 ]; then
	echo "deb-test.sh: $fails check(s) failed"
	exit 1
fi
echo "deb-test.sh: all checks passed"
