#!/usr/bin/env bash
# deb.sh — build the Debian package dist/postie_<version>_<arch>.deb with
# dpkg-deb (no other tools: no debhelper, no new Go dependencies).
#
#   scripts/deb.sh                  # for this machine's architecture
#   GOARCH=arm64 scripts/deb.sh     # cross-built (Postie needs no cgo)
#
# The package holds:
#   /usr/bin/postie                         go build -trimpath, version from git describe
#   /usr/lib/systemd/system/postie.service  contrib/postie.service with the package's user and path
#   /etc/postie/postie.toml                 a conffile, from config.example.toml (edit it, then enable)
#   /usr/share/man/man8/postie.8.gz         from "postie help"
#   /usr/share/doc/postie/                  README.md, docs/, config.example.toml, fail2ban examples
# postinst makes the system user "postie" and /var/lib/postie (0700, owned
# by it); the unit gives the service CAP_NET_BIND_SERVICE for ports 25,
# 80, 110, 443 and 995 without root. The service is neither enabled nor
# started: the config needs a hostname and domains first. "dpkg -r" keeps
# the mail in /var/lib/postie; only "dpkg --purge" removes it.
# It prints the path of the package it built.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

# The version main.version reports: git describe (a tag like v1.2.0, or
# the commit), and a Debian version made of it, which must start with a
# digit: v1.2.0-3-gabcdef -> 1.2.0+3+gabcdef; no tag -> 0~git<date>.<commit>.
describe=$(git describe --tags --always --dirty 2>/dev/null || echo unknown)
if [[ $describe =~ ^v?([0-9]+\.[0-9].*)$ ]]; then
	debversion=${BASH_REMATCH[1]//-/+}
else
	debversion="0~git$(git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || date +%Y%m%d).${describe//-/+}"
fi
debversion=${debversion//[^A-Za-z0-9.+~]/+}

goarch=${GOARCH:-$(go env GOARCH)}
case $goarch in
amd64 | arm64 | riscv64 | ppc64el | s390x) arch=$goarch ;;
386) arch=i386 ;;
arm) arch=armhf ;;
ppc64le) arch=ppc64el ;;
*) echo "deb.sh: no Debian architecture for GOARCH=$goarch" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/etc/postie" \
	"$root/usr/share/man/man8" "$root/usr/share/doc/postie/examples/fail2ban"

CGO_ENABLED=0 GOARCH=$goarch go build -trimpath -ldflags "-s -w -X main.version=$describe" -o "$root/usr/bin/postie" .
chmod 0755 "$root/usr/bin/postie"

# The hardened unit from contrib/, with the package's binary and its
# static system user (made by postinst, so that files in /var/lib/postie
# keep an owner across reinstalls) instead of DynamicUser.
grep -q '^DynamicUser=yes$' contrib/postie.service && grep -q '^ExecStart=/usr/local/bin/postie ' contrib/postie.service || {
	echo "deb.sh: contrib/postie.service no longer has DynamicUser=yes and ExecStart=/usr/local/bin/postie; update the edits below" >&2
	exit 1
}
{
	echo "# systemd unit for Postie, from the Debian package (scripts/deb.sh, from contrib/postie.service)."
	echo "# Edit /etc/postie/postie.toml, then: systemctl enable --now postie"
	echo "# The package makes the system user postie and /var/lib/postie (0700); keep data_dir = \"/var/lib/postie\"."
	sed -e '/^#/d' \
		-e 's|^ExecStart=/usr/local/bin/postie |ExecStart=/usr/bin/postie |' \
		-e 's|^DynamicUser=yes$|User=postie\nGroup=postie|' \
		-e 's|^# A dedicated, unprivileged user made by systemd.*|# The unprivileged system user the package made, with the data under /var/lib/postie.|' \
		contrib/postie.service
} >"$root/usr/lib/systemd/system/postie.service"
chmod 0644 "$root/usr/lib/systemd/system/postie.service"

# The config: the example, which shows every key with its default.
sed -e '1s|.*|# Postie'"'"'s configuration (from the Debian package): set hostname and domains,|' \
	-e '2s|.*|# read [tls], then "systemctl enable --now postie". Every other key below shows its default and may be|' \
	config.example.toml >"$root/etc/postie/postie.toml"
chmod 0644 "$root/etc/postie/postie.toml"
echo /etc/postie/postie.toml >"$root/DEBIAN/conffiles"

# A man page made of the help text ("postie help" and each command's).
host_postie=$root/usr/bin/postie
if [ "$goarch" != "$(go env GOHOSTARCH)" ]; then
	host_postie=$work/postie-host
	CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$describe" -o "$host_postie" .
fi
{
	echo ".TH POSTIE 8 \"$(git log -1 --format=%cd --date=format:%Y-%m-%d 2>/dev/null || date +%F)\" \"postie $describe\" \"Postie\""
	echo ".SH NAME"
	echo "postie \\- a personal mail server: SMTP in, POP3 out"
	echo ".SH SYNOPSIS"
	echo ".B postie"
	echo ".I command"
	echo "[\\fIarguments\\fR]"
	echo ".SH DESCRIPTION"
	echo ".nf"
	"$host_postie" help | sed 's/\\/\\e/g; s/^\./\\\&./'
	echo ".fi"
	echo ".SH COMMANDS"
	for c in $("$host_postie" help | awk '/^Commands:/{on=1; next} on && /^  [a-z]/{print $1}'); do
		echo ".TP"
		"$host_postie" help "$c" | sed 's/\\/\\e/g; s/^ *//; s/^\./\\\&./'
	done
	echo ".SH FILES"
	echo ".TP"
	echo "/etc/postie/postie.toml"
	echo "the configuration; every key is described in it"
	echo ".TP"
	echo "/var/lib/postie"
	echo "the spool, certificates and the control socket"
	echo ".SH SEE ALSO"
	echo "/usr/share/doc/postie/README.md.gz, journalctl \\-u postie"
} | gzip -9n >"$root/usr/share/man/man8/postie.8.gz"

gzip -9nc README.md >"$root/usr/share/doc/postie/README.md.gz"
cp config.example.toml "$root/usr/share/doc/postie/examples/"
cp -r contrib/fail2ban/. "$root/usr/share/doc/postie/examples/fail2ban/"
for f in docs/*.md; do gzip -9nc "$f" >"$root/usr/share/doc/postie/$(basename "$f").gz"; done
find "$root/usr/share" -type d -exec chmod 0755 {} + && find "$root/usr/share" -type f -exec chmod 0644 {} +

cat >"$root/DEBIAN/control" <<CONTROL
Package: postie
Version: $debversion
Architecture: $arch
Maintainer: Postie developers <postmaster@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: adduser
Section: mail
Priority: optional
Homepage: https://github.com/postie/postie
Description: personal mail server in one binary: SMTP in, POP3 out
 Postie receives mail for your domains on port 25 (SPF, DKIM and DMARC
 checked), stores it durably and serves it over POP3 (110 with STLS, 995
 with TLS), with certificates from Let's Encrypt. It never sends mail.
CONTROL

cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
	install -d -m 0700 /var/lib/postie
	if ! getent passwd postie >/dev/null; then
		adduser --system --group --home /var/lib/postie --no-create-home \
			--shell /usr/sbin/nologin --gecos "Postie mail server" postie
	fi
	# The spool, certificates and control socket: the service's only.
	install -d -m 0700 -o postie -g postie /var/lib/postie
	chown postie:postie /var/lib/postie
	chmod 0700 /var/lib/postie
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null || true
		# An upgrade restarts a running server; a first install starts
		# nothing: the config needs a hostname and domains first.
		if [ -n "$2" ] && systemctl is-active --quiet postie.service; then
			systemctl restart postie.service || true
		fi
	fi
	if [ -z "$2" ]; then
		echo "postie: edit /etc/postie/postie.toml (hostname, domains, [tls]), then: systemctl enable --now postie"
	fi
fi
exit 0
POSTINST

cat >"$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl disable --now postie.service >/dev/null 2>&1 || true
fi
exit 0
PRERM

cat >"$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
case "$1" in
purge)
	# The mail, the certificates and the accounts: only on purge, never
	# on remove or upgrade. The system user stays (Debian policy: its
	# id may still own files elsewhere, such as backups).
	rm -rf /var/lib/postie
	;;
esac
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p dist
out="dist/postie_${debversion}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out"
