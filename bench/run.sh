#!/usr/bin/env bash
# bench/run.sh: direct vs nginx vs sluice, side by side on one machine.
#
# Run as root on Debian from anywhere in the repository:
#
#   bash bench/run.sh                # full run: 3 rounds, about 7 minutes
#   QUICK=1 bash bench/run.sh        # smoke run: 1 round, short loads, about 1 minute
#   PROFILE=1 bash bench/run.sh      # CPU and allocation profiles of sluice instead
#
# It installs nginx and wrk from Debian's packages when they are missing,
# builds sluice and the Go programs of bench/, starts one backend (REST and
# WebSocket echo) and measures the backend directly, through nginx and through
# sluice, interleaved and repeated, with the proxy pinned to one CPU and the
# backend and load generators to another. It prints one table of medians and
# ratios to nginx. Everything listens on 127.0.0.1; everything it starts is
# stopped on exit. See bench/README.md for what each figure means.
#
# Settings (environment): ROUNDS, QUICK, PROFILE, CONNS (GET connections, 50),
# SESSIONS (idle WebSocket sessions, 10000), BASE_PORT (18080: backend;
# +1 nginx; +2 sluice), PROXY_CPU (0), LOAD_CPU (1), SLUICE_GOGC (unset = Go's
# default), KEEP_WORK=1 (keep the scratch directory).
set -euo pipefail

QUICK=${QUICK:-0}
PROFILE=${PROFILE:-0}
if [[ $QUICK == 1 ]]; then
	ROUNDS=${ROUNDS:-1}
	GET_SECS=${GET_SECS:-2} BIG_SECS=${BIG_SECS:-2} WS_SECS=${WS_SECS:-2}
	BULK_SECS=${BULK_SECS:-2} HS_SECS=${HS_SECS:-2} WARM_SECS=${WARM_SECS:-1}
	SESSIONS=${SESSIONS:-2000}
else
	ROUNDS=${ROUNDS:-3}
	GET_SECS=${GET_SECS:-10} BIG_SECS=${BIG_SECS:-5} WS_SECS=${WS_SECS:-10}
	BULK_SECS=${BULK_SECS:-5} HS_SECS=${HS_SECS:-5} WARM_SECS=${WARM_SECS:-2}
	SESSIONS=${SESSIONS:-10000}
fi
PROF_SECS=${PROF_SECS:-20}
CONNS=${CONNS:-50}           # small GET connections
BIG_CONNS=${BIG_CONNS:-10}   # 1 MiB GET connections
WS_CONNS=${WS_CONNS:-50}     # WS echo connections, 64 B messages
BULK_CONNS=${BULK_CONNS:-4}  # WS bulk connections, 64 KiB messages
HS_WORKERS=${HS_WORKERS:-16} # concurrent handshake loops
BASE_PORT=${BASE_PORT:-18080}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NOFILE=${NOFILE:-200000}
SRC_IPS=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4

BACKEND_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
SLUICE_PORT=$((BASE_PORT + 2))

die() { echo "bench: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }

# Bounds: ROUNDS and every duration are small integers, so no loop below can
# run away.
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 20 ]] || die "ROUNDS must be 1..20"
for v in GET_SECS BIG_SECS WS_SECS BULK_SECS HS_SECS WARM_SECS PROF_SECS; do
	[[ ${!v} =~ ^[0-9]+$ && ${!v} -ge 1 && ${!v} -le 300 ]] || die "$v must be 1..300 seconds"
done
[[ $SESSIONS =~ ^[0-9]+$ && $SESSIONS -ge 1 && $SESSIONS -le 50000 ]] || die "SESSIONS must be 1..50000"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# --- prerequisites ---------------------------------------------------------

[[ $(nproc) -ge 2 ]] || die "needs 2 CPUs at least (proxy on one, load on another); this machine has $(nproc)"
command -v go >/dev/null || die "go is not installed (Go $(sed -n 's/^go //p' go.mod) or newer is needed)"
command -v taskset >/dev/null || die "taskset is missing (Debian package util-linux)"
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
	[[ $(id -u) == 0 ]] || die "nginx or wrk is missing; run as root so they can be installed"
	note "installing nginx and wrk from Debian's packages"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	pkg=nginx-light
	apt-cache show nginx-light >/dev/null 2>&1 || pkg=nginx
	# A package install may try to start the system nginx on port 80; this
	# benchmark runs its own on a private prefix and never needs it.
	apt-get install -y -q "$pkg" wrk >/dev/null
fi
NGINX=$(command -v nginx)
# The proxy holds two descriptors per idle session (client and backend), and
# nginx starts refusing when fewer than 1/16 of its worker_connections (at
# most the open-file limit) are free.
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
SESSIONS_NOTE=
if ((NOFILE * 15 / 16 < 2 * SESSIONS + 256)); then
	# A container without CAP_SYS_RESOURCE cannot raise its hard limit.
	want=$SESSIONS
	SESSIONS=$(((NOFILE * 15 / 16 - 256) / 2))
	((SESSIONS >= 1000)) || die "open-file limit $NOFILE is too low for idle sessions; run as root"
	SESSIONS_NOTE=" ($want asked; the open-file limit here is $NOFILE)"
	note "open-file limit $NOFILE: measuring $SESSIONS idle sessions instead of $want"
fi

WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
BIN=$WORK/bin
RESULTS=$WORK/results.tsv
: >"$RESULTS"
PIDS=()

cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [[ ${KEEP_WORK:-0} == 1 ]]; then
		note "scratch files kept in $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget() { # forget PID: drop it from the kill list
	local keep=() p
	for p in "${PIDS[@]}"; do [[ $p != "$1" ]] && keep+=("$p"); done
	PIDS=("${keep[@]}")
}

stop() { # stop PID: TERM, wait up to 5 s, KILL
	local pid=$1
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	forget "$pid"
}

for port in "$BACKEND_PORT" "$NGINX_PORT" "$SLUICE_PORT"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		die "127.0.0.1:$port is in use; set BASE_PORT to another port"
	fi
done

# --- build -----------------------------------------------------------------

note "building sluice and the bench programs into $BIN"
mkdir -p "$BIN"
go build -o "$BIN/sluice" ./cmd/sluice
go build -o "$BIN/backend" ./bench/backend
go build -o "$BIN/wsload" ./bench/wsload
if [[ $PROFILE == 1 ]]; then
	go build -o "$BIN/profsluice" ./bench/profsluice
fi

# --- configurations ----------------------------------------------------------

NGINX_PREFIX=$WORK/nginx
NGINX_CONNS=$((NOFILE < 65536 ? NOFILE : 65536))
mkdir -p "$NGINX_PREFIX/logs" "$NGINX_PREFIX/tmp"
nginx_user=www-data
id www-data >/dev/null 2>&1 || nginx_user="nobody nogroup"
cat >"$NGINX_PREFIX/nginx.conf" <<EOF
# What a careful sysadmin writes for a one-core reverse proxy.
daemon off;
user $nginx_user;
worker_processes 1;               # one core, like sluice pinned with GOMAXPROCS=1
worker_rlimit_nofile $NOFILE;
pid $NGINX_PREFIX/nginx.pid;
error_log $NGINX_PREFIX/logs/error.log warn;

events {
    worker_connections $NGINX_CONNS;     # $SESSIONS idle sessions take two each
}

http {
    access_log off;               # off for both proxies
    keepalive_requests 100000;    # the 1.22 default (1000) would reconnect wrk's connections
    client_body_temp_path $NGINX_PREFIX/tmp/body;
    proxy_temp_path $NGINX_PREFIX/tmp/proxy;
    fastcgi_temp_path $NGINX_PREFIX/tmp/fastcgi;
    uwsgi_temp_path $NGINX_PREFIX/tmp/uwsgi;
    scgi_temp_path $NGINX_PREFIX/tmp/scgi;

    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 100000;
    }

    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;

        # REST: HTTP/1.1 with keep-alive to the upstream, and the same
        # forwarding headers sluice sets.
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }

        location /ws {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
}
EOF
"$NGINX" -t -q -p "$NGINX_PREFIX" -e "$NGINX_PREFIX/logs/error.log" -c "$NGINX_PREFIX/nginx.conf" ||
	die "nginx rejected $NGINX_PREFIX/nginx.conf"

SLUICE_CONF=$WORK/sluice.yaml
cat >"$SLUICE_CONF" <<EOF
# The sluice equivalent of the nginx configuration.
listen:
  http: 127.0.0.1:$SLUICE_PORT
admin:
  listen: off
log:
  access: off
  level: warn
routes:
  - name: bench
    path: /
    upstreams: [http://127.0.0.1:$BACKEND_PORT]
EOF
"$BIN/sluice" validate -config "$SLUICE_CONF" >/dev/null || die "sluice rejected $SLUICE_CONF"

# --- processes ---------------------------------------------------------------

wait_http() { # wait_http PORT: until GET /small answers 200, at most 10 s
	local port=$1 line
	for _ in $(seq 100); do
		line=$( (
			exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 0
			printf 'GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
			IFS= read -r -t 2 l <&3 && echo "$l"
		) 2>/dev/null || true)
		[[ $line == "HTTP/1.1 200"* ]] && return 0
		sleep 0.1
	done
	die "nothing answers 200 on 127.0.0.1:$port"
}

BACKEND_PID=
NGINX_PID=
SLUICE_PID=

start_backend() {
	GOMAXPROCS=1 taskset -c "$LOAD_CPU" "$BIN/backend" -addr "127.0.0.1:$BACKEND_PORT" \
		>"$WORK/backend.log" 2>&1 &
	BACKEND_PID=$!
	PIDS+=("$BACKEND_PID")
	wait_http "$BACKEND_PORT"
}

start_nginx() {
	[[ -n $NGINX_PID ]] && stop "$NGINX_PID"
	# Workers inherit the master's CPU affinity.
	taskset -c "$PROXY_CPU" "$NGINX" -p "$NGINX_PREFIX" -e "$NGINX_PREFIX/logs/error.log" \
		-c "$NGINX_PREFIX/nginx.conf" >>"$WORK/nginx.out" 2>&1 &
	NGINX_PID=$!
	PIDS+=("$NGINX_PID")
	wait_http "$NGINX_PORT"
}

start_sluice() { # start_sluice [BINARY ARGS...]: sluice run by default
	[[ -n $SLUICE_PID ]] && stop "$SLUICE_PID"
	local cmd=("$@")
	[[ ${#cmd[@]} == 0 ]] && cmd=("$BIN/sluice" run -config "$SLUICE_CONF")
	local env=(GOMAXPROCS=1)
	[[ -n ${SLUICE_GOGC:-} ]] && env+=(GOGC="$SLUICE_GOGC")
	env "${env[@]}" taskset -c "$PROXY_CPU" "${cmd[@]}" >>"$WORK/sluice.out" 2>&1 &
	SLUICE_PID=$!
	PIDS+=("$SLUICE_PID")
	wait_http "$SLUICE_PORT"
}

# proxy_pids TARGET: the processes whose CPU and memory count for TARGET
# (nginx: the master and its workers).
proxy_pids() {
	case $1 in
	nginx) echo "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true) ;;
	sluice) echo "$SLUICE_PID" ;;
	esac
}

# cpu_ticks TARGET: "user system" CPU time of TARGET's processes, in clock
# ticks.
cpu_ticks() {
	local user=0 sys=0 pid u s
	for pid in $(proxy_pids "$1"); do
		# Fields after "(comm) ": state is $1, so utime (14) is $12, stime $13.
		read -r u s < <(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12, $13}')
		user=$((user + u)) sys=$((sys + s))
	done
	echo "$user $sys"
}

# record_cpu TARGET METRIC BEFORE AFTER COUNT: CPU microseconds per unit,
# in total (METRIC) and in user space only (METRIC_user).
record_cpu() {
	local u0 s0 u1 s1
	read -r u0 s0 <<<"$3"
	read -r u1 s1 <<<"$4"
	record "$1" "$2" "$(per_unit $((u1 + s1 - u0 - s0)) "$5")"
	record "$1" "$2_user" "$(per_unit $((u1 - u0)) "$5")"
}

# rss_kib TARGET: VmRSS summed over TARGET's processes, in KiB.
rss_kib() {
	local total=0 pid r
	for pid in $(proxy_pids "$1"); do
		r=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
		total=$((total + r))
	done
	echo "$total"
}

HZ=$(getconf CLK_TCK)

# cpu_stat CPU: "busy total" jiffies of one CPU from /proc/stat (busy is
# all but idle and iowait).
cpu_stat() {
	awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# record_busy TARGET TEST BEFORE_LOAD AFTER_LOAD BEFORE_PROXY AFTER_PROXY: how
# busy the load CPU and the proxy CPU were during a test, in percent. Which
# one is near 100 % says what bounds the rate: when it is the load CPU, the
# rate measures the backend and load generator as much as the proxy.
record_busy() {
	local b0 t0 b1 t1
	read -r b0 t0 <<<"$3"
	read -r b1 t1 <<<"$4"
	record "$1" "$2_load_busy" "$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN { if (t > 0) printf "%.1f", 100 * b / t; else print "nan" }')"
	[[ $1 == direct ]] && return 0
	read -r b0 t0 <<<"$5"
	read -r b1 t1 <<<"$6"
	record "$1" "$2_proxy_busy" "$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN { if (t > 0) printf "%.1f", 100 * b / t; else print "nan" }')"
}

url_of() {
	case $1 in
	direct) echo "127.0.0.1:$BACKEND_PORT" ;;
	nginx) echo "127.0.0.1:$NGINX_PORT" ;;
	sluice) echo "127.0.0.1:$SLUICE_PORT" ;;
	esac
}

record() { printf '%s\t%s\t%s\t%s\n' "$ROUND" "$1" "$2" "$3" >>"$RESULTS"; } # record TARGET METRIC VALUE

# per_unit TICKS COUNT: microseconds of CPU per unit.
per_unit() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.2f", t * 1e6 / hz / n; else print "nan" }'; }

# wrk_field FILE: the figures of a wrk run, as "requests rps p99_ms errors".
wrk_fields() {
	awk '
	/requests in/ { req = $1 }
	/^Requests\/sec:/ { rps = $2 }
	$1 == "99%" {
		v = $2; unit = v; sub(/^[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v)
		p99 = (unit == "us") ? v / 1000 : (unit == "s") ? v * 1000 : (unit == "m") ? v * 60000 : v
	}
	/Socket errors:/ { gsub(/,/, ""); errs += $4 + $6 + $8 + $10 }
	/Non-2xx or 3xx responses:/ { errs += $5 }
	END { printf "%s %s %s %d\n", req + 0, rps + 0, p99 + 0, errs + 0 }
	' "$1"
}

# kv KEY < LINE: the value of KEY in wsload's key=value line.
kv() { tr ' ' '\n' | sed -n "s/^$1=//p"; }

run_wrk() { # run_wrk TARGET CONNS SECS PATH OUT
	taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"$3"s --timeout 5s --latency "http://$(url_of "$1")$4" >"$5" 2>&1 ||
		note "wrk failed against $1: $(tail -1 "$5")"
}

# --- measurements ----------------------------------------------------------

test_get() {
	local t=$1 out=$WORK/get-$t-$ROUND.txt c0 c1 f
	run_wrk "$t" "$CONNS" "$WARM_SECS" /small "$WORK/warm-$t.txt"
	[[ $t != direct ]] && c0=$(cpu_ticks "$t")
	run_wrk "$t" "$CONNS" "$GET_SECS" /small "$out"
	[[ $t != direct ]] && c1=$(cpu_ticks "$t")
	read -r req rps p99 errs <<<"$(wrk_fields "$out")"
	record "$t" get_rps "$rps"
	record "$t" get_p99_ms "$p99"
	record "$t" errors "$errs"
	[[ $t != direct ]] && record_cpu "$t" get_cpu_us "$c0" "$c1" "$req"
	return 0
}

test_big() {
	local t=$1 out=$WORK/big-$t-$ROUND.txt
	run_wrk "$t" "$BIG_CONNS" "$BIG_SECS" /1m "$out"
	read -r req rps p99 errs <<<"$(wrk_fields "$out")"
	record "$t" big_mbps "$(awk -v r="$rps" 'BEGIN { printf "%.1f", r * 1048576 / 1e6 }')"
	record "$t" errors "$errs"
}

run_wsload() { # run_wsload TARGET OUT ARGS...
	local t=$1 out=$2
	shift 2
	if ! taskset -c "$LOAD_CPU" "$BIN/wsload" -url "ws://$(url_of "$t")/ws" "$@" >"$out" 2>&1; then
		note "wsload $* failed against $t: $(tail -1 "$out")"
		record "$t" errors 1
		return 1
	fi
}

test_echo() {
	local t=$1 out=$WORK/echo-$t-$ROUND.txt c0 c1 line l0 l1 p0 p1
	[[ $t != direct ]] && c0=$(cpu_ticks "$t")
	l0=$(cpu_stat "$LOAD_CPU") p0=$(cpu_stat "$PROXY_CPU")
	run_wsload "$t" "$out" -mode echo -c "$WS_CONNS" -size 64 -d "${WS_SECS}s" || return 0
	l1=$(cpu_stat "$LOAD_CPU") p1=$(cpu_stat "$PROXY_CPU")
	[[ $t != direct ]] && c1=$(cpu_ticks "$t")
	record_busy "$t" echo "$l0" "$l1" "$p0" "$p1"
	line=$(grep '^mode=echo' "$out")
	record "$t" echo_mps "$(kv msg_per_s <<<"$line")"
	record "$t" echo_p99_ms "$(awk -v u="$(kv p99_us <<<"$line")" 'BEGIN { printf "%.3f", u / 1000 }')"
	[[ $t != direct ]] && record_cpu "$t" echo_cpu_us "$c0" "$c1" "$(kv msgs <<<"$line")"
	return 0
}

test_bulk() {
	local t=$1 out=$WORK/bulk-$t-$ROUND.txt
	run_wsload "$t" "$out" -mode echo -c "$BULK_CONNS" -size 65536 -d "${BULK_SECS}s" || return 0
	record "$t" bulk_mbps "$(grep '^mode=echo' "$out" | kv mb_per_s)"
}

# test_handshake TARGET: connect, upgrade, close handshake (send a close
# frame, wait for the reply), hang up; HS_WORKERS loops at once.
test_handshake() {
	local t=$1 out=$WORK/hs-$t-$ROUND.txt line c0 c1 l0 l1 p0 p1
	[[ $t != direct ]] && c0=$(cpu_ticks "$t")
	l0=$(cpu_stat "$LOAD_CPU") p0=$(cpu_stat "$PROXY_CPU")
	run_wsload "$t" "$out" -mode handshake -c "$HS_WORKERS" -d "${HS_SECS}s" -src "$SRC_IPS" || return 0
	l1=$(cpu_stat "$LOAD_CPU") p1=$(cpu_stat "$PROXY_CPU")
	[[ $t != direct ]] && c1=$(cpu_ticks "$t")
	record_busy "$t" hs "$l0" "$l1" "$p0" "$p1"
	line=$(grep '^mode=handshake' "$out")
	record "$t" hs_per_s "$(kv hs_per_s <<<"$line")"
	record "$t" errors "$(kv errors <<<"$line")"
	[[ $t != direct ]] && record_cpu "$t" hs_cpu_us "$c0" "$c1" "$(kv handshakes <<<"$line")"
	return 0
}

# test_hangup TARGET: like test_handshake, but the client hangs up right
# after its close frame, so the figure does not depend on the proxy relaying
# the close reply.
test_hangup() {
	local t=$1 out=$WORK/hangup-$t-$ROUND.txt line
	run_wsload "$t" "$out" -mode handshake -wait-close=false -c "$HS_WORKERS" -d "${HS_SECS}s" -src "$SRC_IPS" || return 0
	line=$(grep '^mode=handshake' "$out")
	record "$t" hangup_per_s "$(kv hs_per_s <<<"$line")"
	record "$t" errors "$(kv errors <<<"$line")"
}

# test_idle TARGET: memory per idle WebSocket session, on a freshly started
# proxy: (VmRSS with SESSIONS open - VmRSS before) / SESSIONS.
test_idle() {
	local t=$1 out=$WORK/idle-$t-$ROUND.txt ready=$WORK/idle-ready r0 r1 pid
	[[ $t == direct ]] && return 0
	rm -f "$ready"
	sleep 1
	r0=$(rss_kib "$t")
	taskset -c "$LOAD_CPU" "$BIN/wsload" -url "ws://$(url_of "$t")/ws" -mode idle -n "$SESSIONS" -c 32 \
		-src "$SRC_IPS" -ready "$ready" -hold 180s >"$out" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	for _ in $(seq 1200); do # at most 120 s
		[[ -e $ready ]] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if [[ ! -e $ready ]]; then
		note "idle sessions did not open through $t: $(tail -1 "$out")"
		record "$t" errors 1
		stop "$pid"
		return 0
	fi
	sleep 2 # let the proxy finish setting up the last sessions
	r1=$(rss_kib "$t")
	stop "$pid"
	record "$t" idle_kib "$(awk -v a="$r0" -v b="$r1" -v n="$SESSIONS" 'BEGIN { printf "%.2f", (b - a) / n }')"
	record "$t" idle_rss0_mib "$(awk -v a="$r0" 'BEGIN { printf "%.1f", a / 1024 }')"
	sleep 3 # let both ends tear the sessions down before the next load
}

# --- machine ---------------------------------------------------------------

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///')
GO_VERSION=$(go env GOVERSION)
WRK_VERSION=$(wrk -v 2>&1 | awk 'NR == 1 {print $2}' || true)
SLUICE_VERSION=$("$BIN/sluice" version | awk '{print $2}')
if rev=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null); then
	git -C "$REPO" diff --quiet HEAD -- . ':!bench' 2>/dev/null || rev+=" + uncommitted changes"
	SLUICE_VERSION+=" (commit $rev)"
fi
OS=$( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null || echo unknown)

start_backend

# --- profile mode ------------------------------------------------------------

# pprof_top PROFILE [ARGS...]: the 15 heaviest entries of a profile.
pprof_top() {
	local f=$1
	shift
	go tool pprof -top -nodecount=15 "$@" "$BIN/profsluice" "$f" 2>/dev/null | sed -n '/^Showing\|flat%/,$p'
}

# profile NAME: run load NAME against profsluice and print its profiles.
profile() {
	local name=$1 dir=$WORK/prof-$1 count ready pid
	mkdir -p "$dir"
	: >"$WORK/sluice.out"
	start_sluice "$BIN/profsluice" -config "$SLUICE_CONF" -cpuprofile "$dir/cpu.pprof" \
		-memprofile "$dir/alloc.pprof" -heapprofile "$dir/heap.pprof"
	case $name in
	get)
		run_wrk sluice "$CONNS" "$PROF_SECS" /small "$dir/load.txt"
		count="$(wrk_fields "$dir/load.txt" | awk '{print $1}') requests"
		;;
	ws-echo)
		run_wsload sluice "$dir/load.txt" -mode echo -c "$WS_CONNS" -size 64 -d "${PROF_SECS}s" || true
		count="$(grep '^mode=echo' "$dir/load.txt" | kv msgs) messages"
		;;
	ws-idle)
		ready=$dir/ready
		taskset -c "$LOAD_CPU" "$BIN/wsload" -url "ws://$(url_of sluice)/ws" -mode idle -n "$SESSIONS" -c 32 \
			-src "$SRC_IPS" -ready "$ready" -hold 120s >"$dir/load.txt" 2>&1 &
		pid=$!
		PIDS+=("$pid")
		for _ in $(seq 1200); do [[ -e $ready ]] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		sleep 2
		kill -USR1 "$SLUICE_PID"
		for _ in $(seq 100); do grep -q 'heap snapshot' "$WORK/sluice.out" && break; sleep 0.1; done
		count="$SESSIONS idle sessions, $(grep -o '[0-9]* goroutines' "$WORK/sluice.out" | tail -1), VmRSS $(rss_kib sluice) KiB"
		stop "$pid"
		;;
	esac
	stop "$SLUICE_PID"
	SLUICE_PID=
	echo
	if [[ $name == ws-idle ]]; then
		echo "=== sluice holding $count ==="
		echo "--- live heap, bytes (top 15) ---"
		pprof_top "$dir/heap.pprof" -sample_index=inuse_space
		cp "$dir/heap.pprof" "$REPO/bench/out/$name-heap.pprof"
		cp "$dir/heap.pprof.goroutines" "$REPO/bench/out/$name-goroutines.pprof"
		return
	fi
	echo "=== sluice under $name: $count in ${PROF_SECS}s ==="
	echo "--- CPU (top 15, flat) ---"
	pprof_top "$dir/cpu.pprof"
	echo "--- allocations, bytes (top 15) ---"
	pprof_top "$dir/alloc.pprof" -sample_index=alloc_space
	echo "--- allocations, objects (top 15) ---"
	pprof_top "$dir/alloc.pprof" -sample_index=alloc_objects
	cp "$dir/cpu.pprof" "$REPO/bench/out/$name-cpu.pprof"
	cp "$dir/alloc.pprof" "$REPO/bench/out/$name-alloc.pprof"
}

if [[ $PROFILE == 1 ]]; then
	note "profiling sluice (GOMAXPROCS=1 on CPU $PROXY_CPU) for ${PROF_SECS}s per load; load average $LOAD_START"
	mkdir -p "$REPO/bench/out"
	# Not a pipeline: profile must run in this shell, whose trap stops what
	# it starts.
	exec 4>&1 > >(tee "$REPO/bench/out/profile.txt")
	tee_pid=$!
	echo "sluice $SLUICE_VERSION, $GO_VERSION, $(nproc) x $CPU_MODEL; load average at start $LOAD_START"
	profile get
	profile ws-echo
	profile ws-idle
	echo
	echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
	exec 1>&4 4>&-
	wait "$tee_pid" 2>/dev/null || true
	cp "$BIN/profsluice" "$REPO/bench/out/profsluice"
	echo "profiles, this text and the binary are in bench/out/ (go tool pprof bench/out/profsluice bench/out/get-cpu.pprof)"
	exit 0
fi

# --- benchmark -------------------------------------------------------------

TARGETS=(direct nginx sluice)
TESTS=(idle get big echo bulk handshake hangup)
T0=$(date +%s)
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
	# Fresh proxies each round: the idle-session figure wants a process that
	# has not grown its heap on earlier loads.
	start_nginx
	start_sluice
	# Rotate the order of the targets so none always goes first.
	order=()
	for i in 0 1 2; do order+=("${TARGETS[$(((i + ROUND - 1) % 3))]}"); done
	for test in "${TESTS[@]}"; do
		for t in "${order[@]}"; do
			note "round $ROUND/$ROUNDS: $test via $t"
			"test_$test" "$t"
		done
	done
done
ELAPSED=$(($(date +%s) - T0))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------

# median METRIC TARGET
median() {
	awk -F'\t' -v m="$1" -v t="$2" '$2 == t && $3 == m && $4 != "nan" {print $4}' "$RESULTS" | sort -g |
		awk '{a[NR] = $1} END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# spread METRIC TARGET: (max - min) / median across rounds, in percent.
spread() {
	awk -F'\t' -v m="$1" -v t="$2" '$2 == t && $3 == m && $4 != "nan" {print $4}' "$RESULTS" | sort -g |
		awk '{a[NR] = $1} END {
			if (NR < 2) { print "-"; exit }
			med = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
			if (med == 0) print "-"; else printf "%.0f%%\n", (a[NR] - a[1]) / med * 100 }'
}

# per_round METRIC BETTER: the sluice / nginx ratio of each round that has
# both figures, as "lowest-highest" and in how many rounds sluice was ahead
# (BETTER is "higher" or "lower"). On a noisy machine the ratio of medians
# can land on either side of 1.0; the range says how far to trust it.
per_round() {
	awk -F'\t' -v m="$1" -v better="$2" '$3 == m && $4 != "nan" && ($2 == "nginx" || $2 == "sluice") { v[$1, $2] = $4; r[$1] = 1 }
		END {
			n = 0; ahead = 0
			for (k in r) {
				if (!((k, "nginx") in v) || !((k, "sluice") in v) || v[k, "nginx"] == 0) continue
				x = v[k, "sluice"] / v[k, "nginx"]
				if (n == 0 || x < lo) lo = x
				if (n == 0 || x > hi) hi = x
				n++
				if ((better == "higher" && x > 1) || (better == "lower" && x < 1)) ahead++
			}
			if (n < 2) print "-"; else printf "%.2f-%.2f %d/%d\n", lo, hi, ahead, n
		}' "$RESULTS"
}

fmt() { # fmt VALUE: 3 significant figures, or "-"
	awk -v v="$1" 'BEGIN { if (v == "-" || v == "") print "-"; else if (v >= 1000) printf "%.0f\n", v; else if (v >= 100) printf "%.1f\n", v; else printf "%.3g\n", v }'
}

ratio() { # ratio A B: A / B to two decimals, or "-"
	awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f\n", a / b }'
}

METRICS=(
	"get_rps|GET 13 B, $CONNS conns: req/s (higher is better)"
	"get_p99_ms|GET 13 B: p99 latency, ms (lower)"
	"get_cpu_us|GET 13 B: proxy CPU per request, us (lower)"
	"get_cpu_us_user|  of which user space, us (lower)"
	"big_mbps|GET 1 MiB, $BIG_CONNS conns: MB/s (higher)"
	"echo_mps|WS echo $WS_CONNS x 64 B: msg/s (higher)"
	"echo_p99_ms|WS echo 64 B: p99 RTT, ms (lower)"
	"echo_cpu_us|WS echo 64 B: proxy CPU per msg, us (lower)"
	"echo_cpu_us_user|  of which user space, us (lower)"
	"echo_load_busy|  load CPU busy during it, % (context)"
	"echo_proxy_busy|  proxy CPU busy during it, % (context)"
	"bulk_mbps|WS echo $BULK_CONNS x 64 KiB: MB/s (higher)"
	"hs_per_s|WS handshake+close/s, $HS_WORKERS workers (higher)"
	"hs_cpu_us|WS handshake: proxy CPU per session, us (lower)"
	"hs_cpu_us_user|  of which user space, us (lower)"
	"hs_load_busy|  load CPU busy during it, % (context)"
	"hs_proxy_busy|  proxy CPU busy during it, % (context)"
	"hangup_per_s|WS handshake+hang-up/s (higher)"
	"idle_kib|WS idle session: proxy RSS, KiB (lower)"
)

{
	echo "sluice benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): $ROUNDS round(s), medians; run took ${ELAPSED}s"
	echo "machine: $(nproc) x $CPU_MODEL, $(free -g | awk '/^Mem:/ {print $2}') GiB, Linux $(uname -r), $OS"
	echo "versions: nginx $NGINX_VERSION, $GO_VERSION, wrk $WRK_VERSION, sluice $SLUICE_VERSION"
	echo "load average: at start $LOAD_START, at end $LOAD_END (other work on the machine adds noise)"
	echo "pinning: proxy on CPU $PROXY_CPU (nginx worker_processes 1; sluice GOMAXPROCS=1, GOGC=${SLUICE_GOGC:-default}),"
	echo "         backend (GOMAXPROCS=1) and load generators on CPU $LOAD_CPU; access logs off in both proxies"
	echo "idle sessions: $SESSIONS$SESSIONS_NOTE; durations: GET ${GET_SECS}s, 1 MiB ${BIG_SECS}s, WS echo ${WS_SECS}s, WS 64 KiB ${BULK_SECS}s, handshakes ${HS_SECS}s"
	echo
	printf '%-46s %10s %10s %10s %8s %14s %8s %12s\n' "metric" "direct" "nginx" "sluice" "sl/ngx" "sl/ngx rounds" "dir/ngx" "spread n/s"
	printf '%-46s %10s %10s %10s %8s %14s %8s %12s\n' "------" "------" "-----" "------" "------" "-------------" "-------" "----------"
	for entry in "${METRICS[@]}"; do
		m=${entry%%|*} label=${entry#*|}
		d=$(median "$m" direct) n=$(median "$m" nginx) s=$(median "$m" sluice)
		if [[ $m == *_busy ]]; then
			# Context, not a figure to compare: no ratios.
			printf '%-46s %10s %10s %10s %8s %14s %8s %12s\n' "$label" "$(fmt "$d")" "$(fmt "$n")" "$(fmt "$s")" - - - -
			continue
		fi
		better=higher
		[[ $label == *"(lower"* ]] && better=lower
		printf '%-46s %10s %10s %10s %8s %14s %8s %12s\n' "$label" "$(fmt "$d")" "$(fmt "$n")" "$(fmt "$s")" \
			"$(ratio "$s" "$n")" "$(per_round "$m" "$better")" "$(ratio "$d" "$n")" "$(spread "$m" nginx)/$(spread "$m" sluice)"
	done
	echo
	echo "sl/ngx = sluice / nginx, dir/ngx = direct / nginx (direct runs backend and load generator on one CPU);"
	echo "sl/ngx rounds = the lowest and highest sluice / nginx ratio of a single round, and in how many rounds sluice was ahead;"
	echo "a load CPU near 100 % busy bounds the rate above it: the proxy then moves it only through its latency."
	echo "spread = (max - min) / median over the rounds, nginx/sluice. Idle RSS before the sessions: nginx $(fmt "$(median idle_rss0_mib nginx)") MiB, sluice $(fmt "$(median idle_rss0_mib sluice)") MiB."
	errs=$(awk -F'\t' '$3 == "errors" && $4 > 0 {print $2 " round " $1 ": " $4}' "$RESULTS" | sort -u | paste -sd';' -)
	if [[ -n $errs ]]; then
		echo "ERRORS during the run (KEEP_WORK=1 keeps the raw outputs): $errs"
	fi
	warn=$(grep -c 'buffered to a temporary file' "$NGINX_PREFIX/logs/error.log" 2>/dev/null || true)
	if [[ ${warn:-0} -gt 0 ]]; then
		echo "note: nginx buffered $warn upstream responses to temporary files (proxy_buffering defaults)"
	fi
} | tee "$WORK/table.txt"
mkdir -p "$REPO/bench/out"
cp "$WORK/table.txt" "$REPO/bench/out/table.txt"
cp "$RESULTS" "$REPO/bench/out/results.tsv"
note "table and per-round figures saved in bench/out/ (table.txt, results.tsv)"
