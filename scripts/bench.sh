#!/usr/bin/env bash
# bench.sh [TARGET...] — measure Postie with the team's benchmark harness
# (its directory in BENCH_DIR: run.sh, the load generator, the peers), by
# default side by side with Postfix + Dovecot and with
# the go-smtp ceiling, in one run (targets postfix-dovecot gosmtp-ceiling
# project, repetitions interleaved):
#
#   sudo BENCH_DIR=/path/to/bench scripts/bench.sh      # postfix-dovecot, gosmtp-ceiling, postie; all cells
#   sudo BENCH_DIR=... MATRIX="smtp-1KiB-c32 pop3-1MiB-c1" REPS=5 scripts/bench.sh
#   sudo BENCH_DIR=... scripts/bench.sh postfix-dovecot project   # explicit targets: only these
#
# gosmtp-ceiling is go-smtp (the version the harness's ceiling/go.mod names)
# with a backend that reads each message and discards it: no checks, no
# storage, no fsync, no POP3, so run.sh runs only the SMTP cells against it.
# Postie's SMTP figures are read as a share of the ceiling measured in the
# same run (same machine, same moment, same load generator), never against
# a ceiling from another run. The same comparison in-process, without the
# harness, is BenchmarkCeiling beside BenchmarkDelivery in smtpin. If
# ceiling/go.mod and our go.mod name different go-smtp versions, the share
# mixes two libraries; the script says so before it starts.
#
# It builds postie, writes a config for loopback ports 30125 (SMTP),
# 30210 (POP3 with STLS) and 30295 (POP3S) with a self-signed certificate
# and data under $BENCH_TMP/postie, and lets run.sh start it, create the
# harness's users and stop it. Postfix runs with no DNS lookups in the
# harness; to compare like with like, Postie's [dns] resolver points at a
# closed port, so its checks end at once with temperror (the Go benchmarks
# in smtpin measure the checks against a real DNS server).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH_DIR:?set BENCH_DIR to the benchmark harness directory (the one with run.sh)}
tmp=${BENCH_TMP:-/tmp/bench}
state=$tmp/postie
[ -x "$bench/run.sh" ] || { echo "no harness at $bench (set BENCH_DIR)" >&2; exit 1; }
export PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN=auto # build with the release go.mod names, as CI does
export RESULTS_DIR=${RESULTS_DIR:-$tmp/results}
rm -rf "$state" && mkdir -p "$state"
(cd "$here" && go build -o "$state/postie" .)
cat >"$state/postie.toml" <<TOML
hostname = "mail.bench.test"
domains = ["bench.test"]
data_dir = "$state/data"

[log]
level = "warn"

[dns]
resolver = "127.0.0.1:9"
timeout = "1s"

[smtp]
listen = ["127.0.0.1:30125"]
max_connections_per_ip = 200

[pop3]
listen = ["127.0.0.1:30210"]
listen_tls = ["127.0.0.1:30295"]
max_connections_per_ip = 100

[tls]
mode = "self-signed"
http_listen = ""
https_listen = ""
TOML
export PROJECT_NAME=postie
export PROJECT_SMTP_ADDR=127.0.0.1:30125 PROJECT_POP3_ADDR=127.0.0.1:30210 PROJECT_POP3S_ADDR=127.0.0.1:30295
export PROJECT_STARTTLS=1 PROJECT_STLS=1
export PROJECT_DOMAIN=bench.test PROJECT_USER_FMT='bench%d@bench.test' PROJECT_RCPT_FMT='bench%d@bench.test'
export PROJECT_PASS=bench-Kite-Orbit-7421
export PROJECT_START_CMD="exec $state/postie serve -config $state/postie.toml"
export PROJECT_ADDUSER_CMD="echo {pass} | $state/postie user add {addr} -config $state/postie.toml"
export PROJECT_DESC="postie $(cd "$here" && git describe --always --dirty 2>/dev/null)"
cd "$bench"
if [ $# -eq 0 ]; then set -- postfix-dovecot gosmtp-ceiling project; fi
case " $* " in
*" gosmtp-ceiling "*)
	# The version a go.mod requires, in a require block or on one line.
	gosmtp() { awk '$1 == "require" { $1 = ""; $0 = $0 } $1 == "github.com/emersion/go-smtp" && $2 ~ /^v/ { print $2; exit }' "$1"; }
	ours=$(gosmtp "$here/go.mod")
	theirs=$(gosmtp "$bench/ceiling/go.mod")
	if [ "$ours" != "$theirs" ]; then
		echo "bench.sh: warning: postie uses go-smtp ${ours:-?} but the ceiling is built with ${theirs:-?} ($bench/ceiling/go.mod): the share compares two versions" >&2
	fi
	;;
esac
exec ./run.sh "$@"
