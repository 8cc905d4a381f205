#!/usr/bin/env bash
# Several voxswitch nodes behind Kamailio on loopback, sharing the local backing
# services (Redis, PostgreSQL, Kafka from services.sh), without Docker or systemd.
#
#   deploy/local/services.sh cluster up [N]   start N nodes (default 2) and Kamailio
#   deploy/local/services.sh cluster down     stop them (nodes drain first)
#   deploy/local/services.sh cluster status   one line each; exit 0 only if all run
#
# Callers use Kamailio: sip:anything@127.0.0.1:$VOXSWITCH_LB_PORT. Kill a node (kill -9
# its pid from `status`) and the others adopt its live calls (README: live-call
# takeover). Settings (environment):
#   VOXSWITCH_CLUSTER_DIR    files of the nodes and Kamailio    default: <state dir>/cluster
#   VOXSWITCH_LB_PORT        Kamailio's SIP port (UDP)          default 5060
#   VOXSWITCH_NODE_SIP_BASE  node i's SIP port is BASE+i        default 5070 (5071, 5072...)
#   VOXSWITCH_NODE_API_BASE  node i's HTTP API port is BASE+i   default 8080 (8081, 8082...)
#   VOXSWITCH_NODE_RTP_BASE  node i's RTP ports start at BASE+(i-1)*COUNT   default 20000
#   VOXSWITCH_NODE_RTP_PORTS COUNT, each node's RTP ports              default 2000
#   VOXSWITCH_PROBE_S        Kamailio's OPTIONS probe interval  default 2
#   VOXSWITCH_AGENT          the nodes' agent                   default demo
#   VOXSWITCH_CLUSTER        the nodes' cluster name            default local
# Node i is node id local-<i>; its records, spool and log are in <cluster dir>/node-<i>.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state_dir="${VOXSWITCH_SERVICES_DIR:-$repo/.services}"
cluster_dir="${VOXSWITCH_CLUSTER_DIR:-$state_dir/cluster}"
LB_PORT="${VOXSWITCH_LB_PORT:-5060}"
SIP_BASE="${VOXSWITCH_NODE_SIP_BASE:-5070}"
API_BASE="${VOXSWITCH_NODE_API_BASE:-8080}"
RTP_BASE="${VOXSWITCH_NODE_RTP_BASE:-20000}"
RTP_PORTS="${VOXSWITCH_NODE_RTP_PORTS:-2000}"
PROBE_S="${VOXSWITCH_PROBE_S:-2}"
voxswitch="$repo/.venv/bin/voxswitch"
python="$repo/.venv/bin/python"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

pid_of() {  # pid_of FILE: the live pid recorded in FILE, else fail
    local pid
    [[ -s "$1" ]] || return 1
    pid=$(tr -dc '0-9' < "$1")
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

stop() {  # stop NAME PIDFILE SECONDS
    local pid i
    pid=$(pid_of "$2") || { rm -f "$2"; return 0; }
    log "$1: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < $3 * 5; i++ )); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
        sleep 0.2
    done
    log "$1: still running after $3 s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$2"
}

healthy() {  # healthy API_PORT
    PYTHONPATH="$repo" "$python" - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError:
    sys.exit(1)
EOF
}

balancer_answers() {
    PYTHONPATH="$repo" "$python" -c "import sys; from loadtest.kamailio import options_ping; \
sys.exit(0 if options_ping('127.0.0.1', $LB_PORT, 0.5) == 200 else 1)" 2>/dev/null
}

node_count() {
    local n=0
    for dir in "$cluster_dir"/node-*; do [[ -d "$dir" ]] && n=$((n + 1)); done
    echo "$n"
}

cmd_up() {
    local n=${1:-2} i dir sip api rtp pid
    [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "usage: $0 up [N]  (1-99 nodes)"
    [[ -x "$voxswitch" ]] || die "no $voxswitch: run 'make venv' first"
    command -v kamailio >/dev/null || [[ -x /usr/sbin/kamailio ]] \
        || "$here/apt-ensure.sh" kamailio
    "$here/services.sh" up
    eval "$("$here/services.sh" env)"
    mkdir -p "$cluster_dir"
    : > "$cluster_dir/dispatcher.list"
    for (( i = 1; i <= n; i++ )); do
        dir="$cluster_dir/node-$i"
        sip=$((SIP_BASE + i)) api=$((API_BASE + i)) rtp=$((RTP_BASE + (i - 1) * RTP_PORTS))
        mkdir -p "$dir"
        printf '1 sip:127.0.0.1:%d 0 0 duid=local-%d\n' "$sip" "$i" >> "$cluster_dir/dispatcher.list"
        if pid=$(pid_of "$dir/pid"); then
            log "node local-$i: already running (pid $pid)"
            continue
        fi
        log "node local-$i: SIP 127.0.0.1:$sip, API :$api, RTP $rtp-$((rtp + RTP_PORTS - 1))"
        (
            cd "$dir"
            VOXSWITCH_NODE_ID="local-$i" VOXSWITCH_CLUSTER="${VOXSWITCH_CLUSTER:-local}" \
            VOXSWITCH_API_HOST=127.0.0.1 \
            VOXSWITCH_AGENT="${VOXSWITCH_AGENT:-demo}" \
                exec nohup "$voxswitch" serve --sip-host 127.0.0.1 --sip-port "$sip" \
                --api-port "$api" --rtp-ports "$rtp-$((rtp + RTP_PORTS - 1))"
        ) >> "$dir/node.log" 2>&1 < /dev/null &
        echo $! > "$dir/pid"
    done
    for (( i = 1; i <= n; i++ )); do
        dir="$cluster_dir/node-$i"
        for (( t = 0; t < 150; t++ )); do
            healthy $((API_BASE + i)) && break
            pid_of "$dir/pid" >/dev/null || { tail -n 20 "$dir/node.log" >&2; die "node local-$i exited"; }
            sleep 0.2
        done
        healthy $((API_BASE + i)) || { tail -n 20 "$dir/node.log" >&2; die "node local-$i not healthy in 30 s"; }
    done
    if ! pid_of "$cluster_dir/kamailio.pid" >/dev/null; then
        log "kamailio: SIP 127.0.0.1:$LB_PORT in front of $n nodes (probe every ${PROBE_S}s)"
        ( exec nohup "$(command -v kamailio || echo /usr/sbin/kamailio)" \
            -f "$repo/deploy/kamailio/kamailio.cfg" -DD -E -Y "$cluster_dir" -m 256 -M 16 \
            -A "DS_LIST=\"$cluster_dir/dispatcher.list\"" -A "LB_LISTEN=udp:127.0.0.1:$LB_PORT" \
            -A "PROBE_S=$PROBE_S" -A "CHILDREN=2" -A "CTL_SOCKET=\"unix:$cluster_dir/ctl\"" \
        ) >> "$cluster_dir/kamailio.log" 2>&1 < /dev/null &
        echo $! > "$cluster_dir/kamailio.pid"
    fi
    for (( t = 0; t < 75; t++ )); do balancer_answers && break; sleep 0.2; done
    balancer_answers || { tail -n 20 "$cluster_dir/kamailio.log" >&2; die "kamailio does not answer OPTIONS"; }
    log "ready: call sip:agent@127.0.0.1:$LB_PORT ($n nodes; '$0 status' lists them)"
}

cmd_down() {
    local dir
    stop kamailio "$cluster_dir/kamailio.pid" 10
    for dir in "$cluster_dir"/node-*; do
        [[ -d "$dir" ]] && stop "node ${dir##*/node-}" "$dir/pid" 30
    done
    log "cluster stopped"
}

cmd_status() {
    local rc=0 dir i pid
    for dir in "$cluster_dir"/node-*; do
        [[ -d "$dir" ]] || continue
        i=${dir##*/node-}
        if pid=$(pid_of "$dir/pid") && healthy $((API_BASE + i)); then
            echo "local-$i    running  pid $pid  SIP 127.0.0.1:$((SIP_BASE + i))  API :$((API_BASE + i))"
        else
            echo "local-$i    stopped"
            rc=1
        fi
    done
    if pid=$(pid_of "$cluster_dir/kamailio.pid") && balancer_answers; then
        echo "kamailio   running  pid $pid  SIP 127.0.0.1:$LB_PORT  ($(node_count) nodes)"
    else
        echo "kamailio   stopped"
        rc=1
    fi
    return $rc
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) shift; cmd_down ;;
    status) shift; cmd_status ;;
    *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
