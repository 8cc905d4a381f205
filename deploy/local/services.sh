#!/usr/bin/env bash
# Local backing services for voxswitch on loopback, without Docker or systemd:
# Redis and PostgreSQL from Debian's packages, a single-node KRaft Kafka broker
# from jars on Maven Central, an S3-compatible store (Versity's S3 gateway,
# versitygw) and Weaviate (the knowledge base's vector store), both built once from
# their Go modules. See deploy/local/SERVICES.md.
#
#   deploy/local/services.sh up            install what is missing, start, wait until ready
#   deploy/local/services.sh down [--purge] stop all (--purge: also delete their data)
#   deploy/local/services.sh status        one line per service; exit 0 only if all run
#   deploy/local/services.sh env           export lines for: eval "$(deploy/local/services.sh env)"
#   deploy/local/services.sh cluster up [N] | down | status
#                                          N voxswitch nodes behind Kamailio on these
#                                          services (deploy/local/cluster.sh)
#
# Settings (environment):
#   VOXSWITCH_SERVICES_DIR          state dir (data, logs, pids)   default: <repo>/.services
#   VOXSWITCH_REDIS_PORT            default 16379
#   VOXSWITCH_POSTGRES_PORT         default 15432
#   VOXSWITCH_KAFKA_PORT            default 19092 (client listener)
#   VOXSWITCH_KAFKA_CONTROLLER_PORT default 19093 (KRaft controller listener)
#   VOXSWITCH_KAFKA_VERSION         default: the kafka.version in kafka-pom.xml
#   VOXSWITCH_S3_PORT               default 17070 (versitygw, bucket voxswitch-recordings)
#   VOXSWITCH_WEAVIATE_PORT         default 18080 (HTTP; gRPC on VOXSWITCH_WEAVIATE_GRPC_PORT,
#                                   default 18051; its cluster ports are 18300, 18301, 18946, 18947)
#   VOXSWITCH_SERVICES_TIMEOUT      seconds to wait for Redis/PostgreSQL (default 60);
#                                   Kafka gets max(this, 120)
# Progress goes to stderr; stdout is kept for `env` and `status`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

REDIS_PORT="${VOXSWITCH_REDIS_PORT:-16379}"
PG_PORT="${VOXSWITCH_POSTGRES_PORT:-15432}"
KAFKA_PORT="${VOXSWITCH_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${VOXSWITCH_KAFKA_CONTROLLER_PORT:-19093}"
S3_PORT="${VOXSWITCH_S3_PORT:-17070}"
S3_KEY=voxswitch
S3_SECRET=voxswitch-secret
S3_BUCKET=voxswitch-recordings
VERSITYGW_VERSION=v1.8.0
WEAVIATE_PORT="${VOXSWITCH_WEAVIATE_PORT:-18080}"
WEAVIATE_GRPC_PORT="${VOXSWITCH_WEAVIATE_GRPC_PORT:-18051}"
WEAVIATE_VERSION=v1.35.2   # its go.mod: go 1.25, no replace directives (go install works)
TIMEOUT="${VOXSWITCH_SERVICES_TIMEOUT:-60}"
KAFKA_TIMEOUT=$(( TIMEOUT > 120 ? TIMEOUT : 120 ))

PG_USER=voxswitch
PG_PASSWORD=voxswitch
PG_DB=voxswitch

state_dir="${VOXSWITCH_SERVICES_DIR:-$repo/.services}"
case "$state_dir" in
    /*) ;;
    *) state_dir="$PWD/$state_dir" ;;
esac

redis_dir="$state_dir/redis"
pg_dir="$state_dir/postgres"
pg_data="$pg_dir/data"
pg_sock="$pg_dir/run"
kafka_dir="$state_dir/kafka"
s3_dir="$state_dir/s3"
weaviate_dir="$state_dir/weaviate"
tools_bin="$repo/.tools/bin"   # built tools, kept across down --purge
kafka_pom="$here/kafka-pom.xml"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [[ $(id -u) -eq 0 ]]; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# True when process $1 exists and is not a zombie (a daemon whose parent is
# init stays a zombie until init reaps it; kill -0 still succeeds on it).
pid_alive() {
    local pid=$1 st
    kill -0 "$pid" 2>/dev/null || return 1
    [[ -r "/proc/$pid/stat" ]] || return 0
    st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

# live_pid FILE [PATTERN]: prints the pid recorded in FILE when that process is
# alive (and, with PATTERN, its command line matches it: guards against a pid
# reused after a reboot), else fails.
live_pid() {
    local file=$1 pattern=${2:-} pid
    [[ -s "$file" ]] || return 1
    pid=$(head -n1 "$file" 2>/dev/null | tr -dc '0-9')
    [[ -n "$pid" ]] && pid_alive "$pid" || return 1
    if [[ -n "$pattern" && -r "/proc/$pid/cmdline" ]]; then
        tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$pattern" || return 1
    fi
    printf '%s\n' "$pid"
}

# stop_pid NAME PID SECONDS: SIGTERM, wait, then SIGKILL.
stop_pid() {
    local name=$1 pid=$2 secs=$3 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for (( i = 0; i < secs * 5; i++ )); do
        pid_alive "$pid" || return 0
        sleep 0.2
    done
    log "$name (pid $pid) did not stop within ${secs}s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for (( i = 0; i < 25; i++ )); do
        pid_alive "$pid" || return 0
        sleep 0.2
    done
}

# Fail if a port we are about to listen on is taken by something else.
ensure_port_free() {
    local name=$1 port=$2
    if port_open "$port"; then
        die "$name: port $port on 127.0.0.1 is already in use by another process; stop it or set the port variable (see the header of $0)"
    fi
}

tail_log() {
    local file=$1
    if [[ -f "$file" ]]; then
        log "last lines of $file:"
        tail -n 30 "$file" >&2 || true
    fi
}

# Runs a command as the postgres user when we are root (initdb and postgres refuse root).
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_bindir() {
    local d
    d=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null \
        | sort -V | tail -n1 || true)
    if [[ -n "$d" ]]; then
        dirname "$d"
    elif command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        pg_config --bindir
    else
        return 1
    fi
}

java_bin() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        printf '%s\n' "$JAVA_HOME/bin/java"
    else
        command -v java
    fi
}

# ---------------------------------------------------------------- install

install_packages() {
    local pkgs=(redis-server redis-tools postgresql)
    command -v java >/dev/null 2>&1 || [[ -n "${JAVA_HOME:-}" ]] || pkgs+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
    "$here/apt-ensure.sh" "${pkgs[@]}" >&2   # apt-get prints to stdout
    command -v runuser >/dev/null 2>&1 || ! is_root || die "runuser (util-linux) is missing"
}

make_state_dir() {
    mkdir -p "$state_dir"
    # The postgres user must be able to traverse to its data dir.
    if is_root; then
        chmod a+x "$state_dir"
        if ! runuser -u postgres -- test -x "$state_dir"; then
            die "the postgres user cannot reach $state_dir (a parent dir is not world-searchable); set VOXSWITCH_SERVICES_DIR to a path it can reach"
        fi
    fi
}

# ---------------------------------------------------------------- redis

redis_pidfile="$redis_dir/redis.pid"

redis_ready() {
    [[ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

redis_up() {
    mkdir -p "$redis_dir"
    if live_pid "$redis_pidfile" redis-server >/dev/null; then
        log "redis: already running (pid $(live_pid "$redis_pidfile" redis-server))"
    else
        ensure_port_free redis "$REDIS_PORT"
        cat > "$redis_dir/redis.conf" <<EOF
# Written by deploy/local/services.sh on every up; edits are lost.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile $redis_pidfile
logfile $redis_dir/redis.log
dir $redis_dir
dbfilename dump.rdb
save 3600 1 300 100 60 10000
appendonly no
maxmemory 256mb
maxmemory-policy noeviction
EOF
        log "redis: starting on 127.0.0.1:$REDIS_PORT"
        rm -f "$redis_pidfile"
        redis-server "$redis_dir/redis.conf" 9>&-   # the daemons must not inherit the lock
    fi
    local i
    for (( i = 0; i < TIMEOUT * 5; i++ )); do
        redis_ready && { log "redis: ready"; return 0; }
        sleep 0.2
    done
    tail_log "$redis_dir/redis.log"
    die "redis: not ready after ${TIMEOUT}s (redis-cli -p $REDIS_PORT ping)"
}

redis_down() {
    local pid
    if pid=$(live_pid "$redis_pidfile" redis-server); then
        log "redis: stopping (pid $pid)"
        stop_pid redis "$pid" 30   # SIGTERM makes redis save dump.rdb first
    fi
    rm -f "$redis_pidfile"
}

redis_status() {
    if live_pid "$redis_pidfile" redis-server >/dev/null && redis_ready; then
        echo "redis     running  127.0.0.1:$REDIS_PORT"
    else
        echo "redis     stopped  127.0.0.1:$REDIS_PORT"
        return 1
    fi
}

# ---------------------------------------------------------------- postgres

pg_pidfile="$pg_data/postmaster.pid"

pg_superuser_psql() {
    # Superuser over the unix socket in the state dir (trust auth, reachable only
    # by the postgres user and root: the dir is mode 700).
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$pg_sock" -p "$PG_PORT" -U postgres -d postgres
}

pg_ready() {
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -t 3 >/dev/null 2>&1 &&
        [[ "$(PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=3 "$PG_BIN/psql" -X -tA -h 127.0.0.1 \
            -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -c 'select 1' 2>/dev/null)" == 1 ]]
}

# A postmaster killed with SIGKILL stays a zombie until init reaps it, and
# postgres refuses to start while the pid in postmaster.pid answers kill -0.
# A zombie is dead for sure (postgres still checks its shared memory is
# unused), so drop its pid file when init does not reap it soon.
pg_clear_zombie_pidfile() {
    local pid i
    [[ -s "$pg_pidfile" ]] || return 0
    pid=$(head -n1 "$pg_pidfile" | tr -dc '0-9')
    [[ -n "$pid" ]] || return 0
    for (( i = 0; i < 25; i++ )); do
        kill -0 "$pid" 2>/dev/null || return 0
        pid_alive "$pid" && return 0   # a live process: postgres will say what it is
        sleep 0.2
    done
    log "postgres: pid $pid in postmaster.pid is a zombie: removing the stale pid file"
    rm -f "$pg_pidfile"
}

pg_up() {
    PG_BIN=$(pg_bindir) || die "postgres: no initdb under /usr/lib/postgresql/*/bin (is the postgresql package installed?)"
    mkdir -p "$pg_dir"
    if is_root; then
        chown postgres: "$pg_dir"
    fi
    chmod 700 "$pg_dir"
    if [[ ! -s "$pg_data/PG_VERSION" ]]; then
        log "postgres: initdb in $pg_data ($("$PG_BIN/postgres" --version))"
        rm -rf "$pg_data"
        as_pg "$PG_BIN/initdb" -D "$pg_data" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 --no-instructions >"$pg_dir/initdb.log" 2>&1 ||
            { tail_log "$pg_dir/initdb.log"; die "postgres: initdb failed"; }
        printf "\ninclude_if_exists = 'voxswitch.conf'\n" | as_pg tee -a "$pg_data/postgresql.conf" >/dev/null
    fi
    as_pg mkdir -p "$pg_sock"
    as_pg tee "$pg_data/voxswitch.conf" >/dev/null <<EOF
# Written by deploy/local/services.sh on every up; edits are lost.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$pg_sock'
max_connections = 100
shared_buffers = 128MB
EOF
    local pid
    if pid=$(live_pid "$pg_pidfile" postgres); then
        log "postgres: already running (pid $pid)"
    else
        pg_clear_zombie_pidfile
        ensure_port_free postgres "$PG_PORT"
        log "postgres: starting on 127.0.0.1:$PG_PORT"
        as_pg "$PG_BIN/pg_ctl" -D "$pg_data" -l "$pg_dir/postgres.log" -w -t "$TIMEOUT" start >/dev/null 9>&- ||
            { tail_log "$pg_dir/postgres.log"; die "postgres: pg_ctl start failed"; }
    fi
    local i ok=0
    for (( i = 0; i < TIMEOUT * 5; i++ )); do
        if "$PG_BIN/pg_isready" -q -h "$pg_sock" -p "$PG_PORT" -U postgres -d postgres -t 2 >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [[ $ok -eq 1 ]] || { tail_log "$pg_dir/postgres.log"; die "postgres: not accepting connections after ${TIMEOUT}s"; }

    # Role and database, idempotently (the password is reset on every up).
    pg_superuser_psql <<EOF
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
        CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD';
    ELSE
        ALTER ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')\gexec
EOF
    for (( i = 0; i < TIMEOUT * 5; i++ )); do
        pg_ready && { log "postgres: ready"; return 0; }
        sleep 0.2
    done
    tail_log "$pg_dir/postgres.log"
    die "postgres: not ready after ${TIMEOUT}s (psql as $PG_USER on 127.0.0.1:$PG_PORT)"
}

pg_down() {
    [[ -f "$pg_pidfile" ]] || return 0
    local pid
    pid=$(live_pid "$pg_pidfile" postgres) || return 0   # postgres clears a stale pid file itself
    PG_BIN=$(pg_bindir) || PG_BIN=
    log "postgres: stopping (pid $pid)"
    if [[ -n "$PG_BIN" ]] && as_pg "$PG_BIN/pg_ctl" -D "$pg_data" -m fast -w -t 30 stop >/dev/null 2>&1; then
        return 0
    fi
    stop_pid postgres "$pid" 10
}

pg_status() {
    local bin
    bin=$(pg_bindir 2>/dev/null) || bin=
    if live_pid "$pg_pidfile" postgres >/dev/null && [[ -n "$bin" ]] &&
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -t 3 >/dev/null 2>&1; then
        echo "postgres  running  127.0.0.1:$PG_PORT"
    else
        echo "postgres  stopped  127.0.0.1:$PG_PORT"
        return 1
    fi
}

# ---------------------------------------------------------------- kafka

kafka_pidfile="$kafka_dir/kafka.pid"

kafka_version() {
    if [[ -n "${VOXSWITCH_KAFKA_VERSION:-}" ]]; then
        printf '%s\n' "$VOXSWITCH_KAFKA_VERSION"
    else
        sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$kafka_pom" | head -n1
    fi
}

KAFKA_VERSION=$(kafka_version)
kafka_libs="$kafka_dir/libs-$KAFKA_VERSION"

kafka_fetch() {
    # The stamp holds the POM's hash: a changed POM fetches again (from ~/.m2 if cached).
    local stamp
    stamp="$KAFKA_VERSION $(sha256sum < "$kafka_pom" | cut -d' ' -f1)"
    if [[ -f "$kafka_libs/.complete" && "$(cat "$kafka_libs/.complete")" == "$stamp" ]]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "kafka: mvn is missing"
    log "kafka: fetching Kafka $KAFKA_VERSION jars with Maven into $kafka_libs (first time only)"
    rm -rf "$kafka_libs.tmp"
    mkdir -p "$kafka_libs.tmp"
    mvn -q -B -Dstyle.color=never -f "$kafka_pom" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$kafka_libs.tmp" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2 ||
        die "kafka: Maven could not fetch the jars (see the output above)"
    rm -rf "$kafka_libs"
    mv "$kafka_libs.tmp" "$kafka_libs"
    printf '%s\n' "$stamp" > "$kafka_libs/.complete"
}

kafka_write_config() {
    mkdir -p "$kafka_dir/data" "$kafka_dir/logs"
    cat > "$kafka_dir/server.properties" <<EOF
# Written by deploy/local/services.sh on every up; edits are lost.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$kafka_dir/data
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
log.retention.hours=24
log.segment.bytes=67108864
EOF
    cat > "$kafka_dir/log4j2.properties" <<EOF
# Broker logging (services.sh): everything to files under $kafka_dir/logs.
status = warn
name = voxswitch-kafka
appender.server.type = RollingFile
appender.server.name = SERVER
appender.server.fileName = $kafka_dir/logs/server.log
appender.server.filePattern = $kafka_dir/logs/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 20MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = SERVER
logger.state.name = state.change.logger
logger.state.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
    cat > "$kafka_dir/tools-log4j2.properties" <<EOF
# Command-line tools (services.sh): warnings to stderr only.
status = warn
name = voxswitch-kafka-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
    cat > "$kafka_dir/tools-client.properties" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

# kafka_tool CLASS ARGS...: runs a Kafka command-line class on the fetched jars,
# killed after KAFKA_TOOL_TIMEOUT seconds (default 300).
kafka_tool() {
    local java
    java=$(java_bin) || die "kafka: java not found"
    timeout "${KAFKA_TOOL_TIMEOUT:-300}" "$java" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$kafka_dir/tools-log4j2.properties" \
        -cp "$kafka_libs/*" "$@"
}

# The class of the topics tool moved from core (3.x) to kafka-tools (3.5+).
kafka_topic_class() {
    # A jar's file names are stored uncompressed, so grep finds them.
    if LC_ALL=C grep -qa 'org/apache/kafka/tools/TopicCommand.class' \
        "$kafka_libs/kafka-tools-$KAFKA_VERSION.jar" 2>/dev/null; then
        echo org.apache.kafka.tools.TopicCommand
    else
        echo kafka.admin.TopicCommand
    fi
}

kafka_format() {
    [[ -s "$kafka_dir/data/meta.properties" ]] && return 0
    local cid
    if [[ -s "$kafka_dir/cluster-id" ]]; then
        cid=$(cat "$kafka_dir/cluster-id")
    else
        cid=$(kafka_tool kafka.tools.StorageTool random-uuid 2>>"$kafka_dir/logs/format.log" | tail -n1)
        [[ "$cid" =~ ^[A-Za-z0-9_-]{22}$ ]] || { tail_log "$kafka_dir/logs/format.log"; die "kafka: could not generate a cluster id"; }
        printf '%s\n' "$cid" > "$kafka_dir/cluster-id"
    fi
    log "kafka: formatting storage (cluster id $cid)"
    # With controller.quorum.voters (static quorum) no --standalone/--initial-controllers.
    kafka_tool kafka.tools.StorageTool format -t "$cid" -c "$kafka_dir/server.properties" \
        >>"$kafka_dir/logs/format.log" 2>&1 ||
        { tail_log "$kafka_dir/logs/format.log"; die "kafka: storage format failed"; }
}

# A metadata request through the admin client: lists the topics.
kafka_metadata_ok() {
    KAFKA_TOOL_TIMEOUT=30 kafka_tool "$1" --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
        --command-config "$kafka_dir/tools-client.properties" --list \
        >/dev/null 2>>"$kafka_dir/logs/ready-check.log"
}

kafka_up() {
    local java jv
    java=$(java_bin) || die "kafka: java not found (install OpenJDK 17+)"
    jv=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    [[ "${jv:-0}" =~ ^[0-9]+$ && $jv -ge 17 ]] || die "kafka: needs Java 17+, $java is ${jv:-unknown} (set JAVA_HOME)"
    kafka_fetch
    mkdir -p "$kafka_dir"
    local pid
    if pid=$(live_pid "$kafka_pidfile" kafka.Kafka); then
        log "kafka: already running (pid $pid)"
    else
        ensure_port_free kafka "$KAFKA_PORT"
        ensure_port_free kafka-controller "$KAFKA_CONTROLLER_PORT"
        kafka_write_config
        kafka_format
        log "kafka: starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT)"
        rm -f "$kafka_pidfile"
        # setsid: own session, so the broker outlives the shell that ran `up`;
        # the inner shell records its pid and becomes java through exec.
        # shellcheck disable=SC2016  # expanded by the inner shell, on purpose
        KAFKA_JAVA="$java" KAFKA_DIR="$kafka_dir" KAFKA_LIBS="$kafka_libs" \
            setsid bash -c '
                echo $$ > "$KAFKA_DIR/kafka.pid"
                exec nohup "$KAFKA_JAVA" -Xmx384m -Xms128m -XX:+UseSerialGC \
                    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
                    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
                    -Dlog4j2.shutdownHookEnabled=false \
                    -Dkafka.logs.dir="$KAFKA_DIR/logs" \
                    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties"
            ' </dev/null >"$kafka_dir/logs/stdout.log" 2>&1 9>&- &
        local i
        for (( i = 0; i < 50; i++ )); do
            [[ -s "$kafka_pidfile" ]] && break
            sleep 0.1
        done
    fi

    local topic_class deadline
    topic_class=$(kafka_topic_class)
    deadline=$(( SECONDS + KAFKA_TIMEOUT ))
    mkdir -p "$kafka_dir/logs"
    : > "$kafka_dir/logs/ready-check.log"
    while (( SECONDS < deadline )); do
        if ! live_pid "$kafka_pidfile" kafka.Kafka >/dev/null; then
            tail_log "$kafka_dir/logs/server.log"
            tail_log "$kafka_dir/logs/stdout.log"
            die "kafka: the broker exited during startup (logs in $kafka_dir/logs)"
        fi
        if port_open "$KAFKA_PORT" &&
            kafka_metadata_ok "$topic_class"; then
            log "kafka: ready"
            return 0
        fi
        sleep 1
    done
    tail_log "$kafka_dir/logs/ready-check.log"
    tail_log "$kafka_dir/logs/server.log"
    die "kafka: not ready after ${KAFKA_TIMEOUT}s (metadata request to 127.0.0.1:$KAFKA_PORT)"
}

kafka_down() {
    local pid
    if pid=$(live_pid "$kafka_pidfile" kafka.Kafka); then
        log "kafka: stopping (pid $pid)"
        stop_pid kafka "$pid" 60   # SIGTERM = controlled shutdown
    fi
    rm -f "$kafka_pidfile"
}

kafka_status() {
    if live_pid "$kafka_pidfile" kafka.Kafka >/dev/null && port_open "$KAFKA_PORT"; then
        echo "kafka     running  127.0.0.1:$KAFKA_PORT"
    else
        echo "kafka     stopped  127.0.0.1:$KAFKA_PORT"
        return 1
    fi
}

# ---------------------------------------------------------------- s3 (versitygw)

s3_pidfile="$s3_dir/versitygw.pid"

s3_build() {
    [[ -x "$tools_bin/versitygw" ]] && return 0
    command -v go >/dev/null || die "s3: Go is needed to build versitygw (go install)"
    log "s3: building versitygw $VERSITYGW_VERSION with go install (first time only, ~1-3 min)"
    mkdir -p "$tools_bin"
    GOBIN="$tools_bin" GOFLAGS=-mod=mod CGO_ENABLED=0 \
        go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" \
        > "$state_dir/versitygw-build.log" 2>&1 \
        || { tail_log "$state_dir/versitygw-build.log"; die "s3: versitygw did not build"; }
}

s3_up() {
    s3_build
    mkdir -p "$s3_dir/data/$S3_BUCKET"   # a top-level folder is a bucket (posix backend)
    if live_pid "$s3_pidfile" versitygw >/dev/null; then
        log "s3: already running (pid $(live_pid "$s3_pidfile" versitygw))"
    else
        ensure_port_free s3 "$S3_PORT"
        log "s3: starting versitygw on 127.0.0.1:$S3_PORT (bucket $S3_BUCKET)"
        ROOT_ACCESS_KEY="$S3_KEY" ROOT_SECRET_KEY="$S3_SECRET" \
            setsid "$tools_bin/versitygw" --port "127.0.0.1:$S3_PORT" --region us-east-1 \
            posix "$s3_dir/data" > "$s3_dir/versitygw.log" 2>&1 < /dev/null 9>&- &
        echo $! > "$s3_pidfile"
    fi
    local i
    for (( i = 0; i < TIMEOUT * 5; i++ )); do
        port_open "$S3_PORT" && { log "s3: ready"; return 0; }
        sleep 0.2
    done
    tail_log "$s3_dir/versitygw.log"
    die "s3: versitygw not listening on 127.0.0.1:$S3_PORT after ${TIMEOUT}s"
}

s3_down() {
    local pid
    if pid=$(live_pid "$s3_pidfile" versitygw); then
        log "s3: stopping (pid $pid)"
        stop_pid s3 "$pid" 10
    fi
    rm -f "$s3_pidfile"
}

s3_status() {
    if live_pid "$s3_pidfile" versitygw >/dev/null && port_open "$S3_PORT"; then
        echo "s3        running  127.0.0.1:$S3_PORT"
    else
        echo "s3        stopped  127.0.0.1:$S3_PORT"
        return 1
    fi
}

# ---------------------------------------------------------------- weaviate

weaviate_pidfile="$weaviate_dir/weaviate.pid"

weaviate_build() {
    [[ -x "$tools_bin/weaviate-server" ]] && return 0
    command -v go >/dev/null || die "weaviate: Go is needed to build weaviate-server (go install)"
    log "weaviate: building weaviate-server $WEAVIATE_VERSION with go install (first time only, ~2-4 min)"
    mkdir -p "$tools_bin"
    GOBIN="$tools_bin" GOFLAGS=-mod=mod \
        go install "github.com/weaviate/weaviate/cmd/weaviate-server@$WEAVIATE_VERSION" \
        > "$state_dir/weaviate-build.log" 2>&1 \
        || { tail_log "$state_dir/weaviate-build.log"; die "weaviate: weaviate-server did not build"; }
}

weaviate_ready() {
    timeout 3 python3 -c "import sys, urllib.request; sys.exit(urllib.request.urlopen(
        'http://127.0.0.1:$WEAVIATE_PORT/v1/.well-known/ready', timeout=2).status != 200)" \
        2>/dev/null
}

weaviate_up() {
    weaviate_build
    mkdir -p "$weaviate_dir/data"
    if live_pid "$weaviate_pidfile" weaviate-server >/dev/null; then
        log "weaviate: already running (pid $(live_pid "$weaviate_pidfile" weaviate-server))"
    else
        ensure_port_free weaviate "$WEAVIATE_PORT"
        ensure_port_free weaviate-grpc "$WEAVIATE_GRPC_PORT"
        log "weaviate: starting on 127.0.0.1:$WEAVIATE_PORT (gRPC $WEAVIATE_GRPC_PORT)"
        # One node on loopback: no local vectorizer module, none by default (we bring our
        # own vectors; its API-based modules stay listed but need keys nobody gives),
        # anonymous access, no telemetry; its cluster and Raft ports pinned to loopback.
        PERSISTENCE_DATA_PATH="$weaviate_dir/data" \
        AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED=true \
        DEFAULT_VECTORIZER_MODULE=none ENABLE_MODULES= DISABLE_TELEMETRY=true \
        GRPC_PORT="$WEAVIATE_GRPC_PORT" CLUSTER_HOSTNAME=node1 CLUSTER_ADVERTISE_ADDR=127.0.0.1 \
        CLUSTER_GOSSIP_BIND_PORT=18946 CLUSTER_DATA_BIND_PORT=18947 \
        RAFT_PORT=18300 RAFT_INTERNAL_RPC_PORT=18301 RAFT_JOIN=node1:18300 RAFT_BOOTSTRAP_EXPECT=1 \
            setsid "$tools_bin/weaviate-server" --host 127.0.0.1 --port "$WEAVIATE_PORT" \
            --scheme http > "$weaviate_dir/weaviate.log" 2>&1 < /dev/null 9>&- &
        echo $! > "$weaviate_pidfile"
    fi
    local i
    for (( i = 0; i < TIMEOUT * 5; i++ )); do
        weaviate_ready && { log "weaviate: ready"; return 0; }
        sleep 0.2
    done
    tail_log "$weaviate_dir/weaviate.log"
    die "weaviate: not ready on 127.0.0.1:$WEAVIATE_PORT after ${TIMEOUT}s"
}

weaviate_down() {
    local pid
    if pid=$(live_pid "$weaviate_pidfile" weaviate-server); then
        log "weaviate: stopping (pid $pid)"
        stop_pid weaviate "$pid" 20
    fi
    rm -f "$weaviate_pidfile"
}

weaviate_status() {
    if live_pid "$weaviate_pidfile" weaviate-server >/dev/null && weaviate_ready; then
        echo "weaviate  running  127.0.0.1:$WEAVIATE_PORT (gRPC $WEAVIATE_GRPC_PORT)"
    else
        echo "weaviate  stopped  127.0.0.1:$WEAVIATE_PORT"
        return 1
    fi
}

# ---------------------------------------------------------------- commands

cmd_up() {
    install_packages
    make_state_dir
    exec 9>"$state_dir/.lock"
    flock -w 600 9 || die "another services.sh holds $state_dir/.lock"
    redis_up
    pg_up
    kafka_up
    s3_up
    weaviate_up
    log "all services ready (state dir $state_dir); eval \"\$($0 env)\" to use them"
}

cmd_down() {
    local purge=0
    case "${1:-}" in
        --purge) purge=1 ;;
        "") ;;
        *) die "usage: $0 down [--purge]" ;;
    esac
    if [[ -d "$state_dir" ]]; then
        exec 9>"$state_dir/.lock"
        flock -w 600 9 || die "another services.sh holds $state_dir/.lock"
        weaviate_down
        s3_down
        kafka_down
        pg_down
        redis_down
    fi
    if [[ $purge -eq 1 && -d "$state_dir" ]]; then
        # Only what this script creates, in case the state dir was pointed at a
        # shared directory; the dir itself goes when that leaves it empty.
        log "removing the data in $state_dir"
        rm -rf "$redis_dir" "$pg_dir" "$kafka_dir" "$s3_dir" "$weaviate_dir" "$state_dir/.lock"
        rmdir "$state_dir" 2>/dev/null || true
    fi
    log "all services stopped"
}

cmd_status() {
    local rc=0
    redis_status || rc=1
    pg_status || rc=1
    kafka_status || rc=1
    s3_status || rc=1
    weaviate_status || rc=1
    return $rc
}

cmd_env() {
    echo "export VOXSWITCH_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
    echo "export VOXSWITCH_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
    echo "export VOXSWITCH_POSTGRES_DSN=postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
    echo "export VOXSWITCH_S3_URL=http://$S3_KEY:$S3_SECRET@127.0.0.1:$S3_PORT/$S3_BUCKET"
    echo "export VOXSWITCH_WEAVIATE_URL=http://127.0.0.1:$WEAVIATE_PORT"
    echo "export VOXSWITCH_WEAVIATE_GRPC_PORT=$WEAVIATE_GRPC_PORT"
}

usage() {
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

case "${1:-}" in
    up) shift; [[ $# -eq 0 ]] || usage; cmd_up ;;
    down) shift; cmd_down "$@" ;;
    status) shift; cmd_status ;;
    env) shift; cmd_env ;;
    cluster) shift; exec "$here/cluster.sh" "$@" ;;
    *) usage ;;
esac
