#!/usr/bin/env bash
# Makes sure the engines strata's integration tests use are running on loopback:
#   PostgreSQL 15 on 127.0.0.1:5432 with wal_level=logical and room for replication slots,
#   two more PostgreSQL servers (clusters shard_a on 5433 and shard_b on 5434) for multi-server
#   tests, two streaming replicas of the main cluster (replica_1 on 5441, replica_2 on 5442),
#   Redis on 127.0.0.1:6379, NATS with JetStream on 127.0.0.1:4222.
# Installs a missing engine from Debian's packages (when root), starts a stopped one, changes
# PostgreSQL settings (restarting it) only when they are not already right, and otherwise does
# nothing. Prints one line per service saying what it did. Exits non-zero if a service cannot be
# made ready. Safe to run any number of times.
set -uo pipefail

PG_VERSION=${STRATA_PG_VERSION:-15}
PG_PORT=5432
REDIS_PORT=6379
NATS_PORT=4222
WAIT_SECONDS=${STRATA_SERVICES_WAIT:-60}
failed=0
apt_updated=0

say() { printf '%-9s %s\n' "$1:" "$2"; }
is_root() { [ "$(id -u)" -eq 0 ]; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # wait_for SECONDS command...
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

apt_install() {
  if ! is_root; then return 1; fi
  if [ "$apt_updated" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || return 1
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

pg_bin() { echo "/usr/lib/postgresql/$PG_VERSION/bin"; }

pg_sql() { # run SQL as the postgres superuser; TCP trust first, then the local socket as postgres
  psql -X -q -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "$1" 2>/dev/null && return 0
  is_root && runuser -u postgres -- psql -X -q -At -p "$PG_PORT" -d postgres -c "$1" 2>/dev/null
}

pg_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }

pg_ctl_cluster() { pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main "$1" >/dev/null 2>&1; }

ensure_postgres() {
  local did=()
  if [ ! -x "$(pg_bin)/postgres" ]; then
    if apt_install "postgresql-$PG_VERSION" postgresql-client-"$PG_VERSION"; then
      did+=("installed postgresql-$PG_VERSION")
    else
      say postgres "FAILED: PostgreSQL $PG_VERSION is not installed and could not be installed (need root and apt)"
      failed=1; return
    fi
  fi
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$PG_VERSION main"; then
    if is_root && pg_createcluster "$PG_VERSION" main --port "$PG_PORT" >/dev/null 2>&1; then
      did+=("created cluster $PG_VERSION/main")
    else
      say postgres "FAILED: no cluster $PG_VERSION/main and it could not be created"
      failed=1; return
    fi
  fi
  if ! pg_ready; then
    pg_ctl_cluster start
    if ! wait_for "$WAIT_SECONDS" pg_ready; then
      say postgres "FAILED: cluster $PG_VERSION/main did not start; see /var/log/postgresql/postgresql-$PG_VERSION-main.log"
      failed=1; return
    fi
    did+=("started")
  fi
  # Tests connect over TCP as postgres without a password; a fresh Debian cluster asks for one.
  if ! psql -X -q -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c 'select 1' >/dev/null 2>&1; then
    local hba
    hba=$(pg_sql 'show hba_file')
    if [ -n "$hba" ] && is_root; then
      sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nhost replication all 127.0.0.1/32 trust\nhost replication all ::1/128 trust' "$hba"
      pg_sql 'select pg_reload_conf()' >/dev/null
      did+=("allowed loopback trust auth")
    fi
  fi
  # Logical replication (change capture), slots and WAL senders (replicas), connections (tests).
  local restart=0 name want have
  for setting in wal_level=logical max_replication_slots=32 max_wal_senders=32 max_connections=300; do
    name=${setting%%=*}; want=${setting#*=}
    have=$(pg_sql "show $name")
    if [ -z "$have" ]; then
      say postgres "FAILED: cannot query settings as the postgres superuser"
      failed=1; return
    fi
    if [ "$name" = wal_level ]; then
      [ "$have" = logical ] && continue
    elif [ "$have" -ge "$want" ] 2>/dev/null; then
      continue
    fi
    pg_sql "alter system set $name = '$want'" >/dev/null && restart=1 && did+=("set $name=$want")
  done
  if [ "$restart" -eq 1 ]; then
    pg_ctl_cluster restart
    if ! wait_for "$WAIT_SECONDS" pg_ready; then
      say postgres "FAILED: did not come back after the restart"
      failed=1; return
    fi
    did+=("restarted")
  fi
  if [ "$(pg_sql 'show wal_level')" != logical ]; then
    say postgres "FAILED: wal_level is still not logical"
    failed=1; return
  fi
  local version
  version=$(pg_sql 'show server_version' | cut -d' ' -f1)
  if [ ${#did[@]} -eq 0 ]; then
    say postgres "already running $version on 127.0.0.1:$PG_PORT with wal_level=logical; nothing to do"
  else
    say postgres "$(IFS=,; echo "${did[*]}" | sed 's/,/, /g'); running $version on 127.0.0.1:$PG_PORT with wal_level=logical"
  fi
}

# ---------------------------------------------------------------------------------------------
# Extra PostgreSQL servers (separate clusters on other loopback ports), for multi-server tests

pg_port_sql() { # pg_port_sql PORT SQL
  psql -X -q -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2" 2>/dev/null && return 0
  is_root && runuser -u postgres -- psql -X -q -At -p "$1" -d postgres -c "$2" 2>/dev/null
}

ensure_pg_cluster() { # ensure_pg_cluster NAME PORT
  local name=$1 port=$2 did=()
  if [ ! -x "$(pg_bin)/postgres" ]; then
    say "pg:$name" "FAILED: PostgreSQL $PG_VERSION is not installed"
    failed=1; return
  fi
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$PG_VERSION $name"; then
    if ! is_root || ! pg_createcluster "$PG_VERSION" "$name" --port "$port" >/dev/null 2>&1; then
      say "pg:$name" "FAILED: cluster $PG_VERSION/$name could not be created (need root)"
      failed=1; return
    fi
    local conf="/etc/postgresql/$PG_VERSION/$name"
    # Loopback only, trusted, like the main test cluster; logical replication for change capture.
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nhost replication all 127.0.0.1/32 trust' "$conf/pg_hba.conf"
    cat >> "$conf/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
wal_level = logical
max_replication_slots = 16
max_wal_senders = 16
max_connections = 200
shared_buffers = 64MB
CONF
    did+=("created cluster $PG_VERSION/$name")
  fi
  if ! "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$port" 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$name" start >/dev/null 2>&1
    if ! wait_for "$WAIT_SECONDS" "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$port"; then
      say "pg:$name" "FAILED: cluster $PG_VERSION/$name did not start on 127.0.0.1:$port"
      failed=1; return
    fi
    did+=("started")
  fi
  if [ "$(pg_port_sql "$port" 'show wal_level')" != logical ]; then
    say "pg:$name" "FAILED: wal_level is not logical on 127.0.0.1:$port"
    failed=1; return
  fi
  if [ ${#did[@]} -eq 0 ]; then
    say "pg:$name" "already running on 127.0.0.1:$port; nothing to do"
  else
    say "pg:$name" "$(IFS=,; echo "${did[*]}" | sed 's/,/, /g'); running on 127.0.0.1:$port"
  fi
}

# Streaming replicas of the main cluster (read replicas): pg_basebackup from 127.0.0.1:$PG_PORT,
# a physical slot per replica so the primary keeps the WAL they need, hot standby on.
ensure_pg_replica() { # ensure_pg_replica NAME PORT
  local name=$1 port=$2 did=()
  local hba
  hba=$(pg_sql 'show hba_file')
  # Replication connections need their own pg_hba line ("all" does not cover them).
  if [ -n "$hba" ] && ! grep -qE '^host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    if is_root; then
      sed -i '1i host replication all 127.0.0.1/32 trust' "$hba"
      pg_sql 'select pg_reload_conf()' >/dev/null
      did+=("allowed loopback replication on the primary")
    fi
  fi
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$PG_VERSION $name"; then
    if ! is_root; then
      say "pg:$name" "FAILED: replica $name does not exist and creating it needs root"
      failed=1; return
    fi
    local data="/var/lib/postgresql/$PG_VERSION/$name"
    local slot="strata_${name}"
    pg_sql "select pg_create_physical_replication_slot('$slot') where not exists (select 1 from pg_replication_slots where slot_name = '$slot')" >/dev/null
    pg_createcluster "$PG_VERSION" "$name" --port "$port" >/dev/null 2>&1 || { say "pg:$name" "FAILED: pg_createcluster"; failed=1; return; }
    # Keep the directory pg_createcluster made (owned by postgres); pg_basebackup fills it.
    find "$data" -mindepth 1 -delete
    if ! runuser -u postgres -- "$(pg_bin)/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$data" \
        --checkpoint=fast -X stream -R -S "$slot" >/dev/null 2>&1; then
      say "pg:$name" "FAILED: pg_basebackup from 127.0.0.1:$PG_PORT"
      failed=1; return
    fi
    local conf="/etc/postgresql/$PG_VERSION/$name"
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf/pg_hba.conf"
    cat >> "$conf/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
hot_standby = on
hot_standby_feedback = on
max_connections = 300
max_wal_senders = 32
max_replication_slots = 32
wal_level = logical
CONF
    did+=("created streaming replica of 127.0.0.1:$PG_PORT")
  fi
  if ! "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$port" 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$name" start >/dev/null 2>&1
    if ! wait_for "$WAIT_SECONDS" "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$port"; then
      say "pg:$name" "FAILED: replica $name did not start on 127.0.0.1:$port"
      failed=1; return
    fi
    did+=("started")
  fi
  if [ "$(pg_port_sql "$port" 'select pg_is_in_recovery()')" != t ]; then
    say "pg:$name" "FAILED: 127.0.0.1:$port is not a standby"
    failed=1; return
  fi
  # A test killed mid-run may have left replay delayed or paused (the lag tests do both): undo it.
  if [ "$(pg_port_sql "$port" "select setting from pg_settings where name = 'recovery_min_apply_delay'")" != 0 ]; then
    pg_port_sql "$port" 'alter system reset recovery_min_apply_delay' >/dev/null
    pg_port_sql "$port" 'select pg_reload_conf()' >/dev/null
    did+=("removed a leftover replay delay")
  fi
  if [ "$(pg_port_sql "$port" 'select pg_get_wal_replay_pause_state()')" != not\ paused ]; then
    pg_port_sql "$port" 'select pg_wal_replay_resume()' >/dev/null
    did+=("resumed paused replay")
  fi
  if [ ${#did[@]} -eq 0 ]; then
    say "pg:$name" "already replicating on 127.0.0.1:$port; nothing to do"
  else
    say "pg:$name" "$(IFS=,; echo "${did[*]}" | sed 's/,/, /g'); replicating on 127.0.0.1:$port"
  fi
}

drop_pg_replica() { # drop_pg_replica NAME
  local name=$1
  pg_dropcluster --stop "$PG_VERSION" "$name" >/dev/null 2>&1
  pg_sql "select pg_drop_replication_slot('strata_${name}') from pg_replication_slots where slot_name = 'strata_${name}'" >/dev/null
  say "pg:$name" "dropped"
}

PG_REPLICAS=${STRATA_PG_REPLICA_CLUSTERS:-"replica_1:5441 replica_2:5442"}

ensure_pg_replicas() {
  local entry
  for entry in $PG_REPLICAS; do ensure_pg_replica "${entry%%:*}" "${entry##*:}"; done
}

# The extra servers tests use: two shard servers (multi-server sharding).
PG_EXTRA_CLUSTERS=${STRATA_PG_EXTRA_CLUSTERS:-"shard_a:5433 shard_b:5434"}

ensure_pg_extra() {
  local entry
  for entry in $PG_EXTRA_CLUSTERS; do ensure_pg_cluster "${entry%%:*}" "${entry##*:}"; done
}

# ---------------------------------------------------------------------------------------------
# Redis

redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

ensure_redis() {
  local did=()
  if ! command -v redis-server >/dev/null 2>&1; then
    if apt_install redis-server redis-tools; then did+=("installed redis-server"); else
      say redis "FAILED: redis-server is not installed and could not be installed (need root and apt)"
      failed=1; return
    fi
    # Debian's package may start its own service; the check below adopts it if it answers.
  fi
  if ! redis_ping; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1
    if ! wait_for "$WAIT_SECONDS" redis_ping; then
      say redis "FAILED: did not answer PING on 127.0.0.1:$REDIS_PORT; see /var/log/redis/ci.log"
      failed=1; return
    fi
    did+=("started")
  fi
  local version
  version=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' | awk -F: '/^redis_version/{print $2}')
  if [ ${#did[@]} -eq 0 ]; then
    say redis "already running $version on 127.0.0.1:$REDIS_PORT; nothing to do"
  else
    say redis "$(IFS=,; echo "${did[*]}" | sed 's/,/, /g'); running $version on 127.0.0.1:$REDIS_PORT"
  fi
}

# ---------------------------------------------------------------------------------------------
# NATS with JetStream

nats_info() { # prints the server's INFO line
  (
    exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT" || exit 1
    IFS= read -r -t 3 line <&3 && printf '%s\n' "$line"
  ) 2>/dev/null
}

nats_jetstream() { nats_info | grep -q '"jetstream":true'; }

ensure_nats() {
  local did=()
  local bin
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  if [ ! -x "$bin" ]; then
    if apt_install nats-server; then did+=("installed nats-server"); bin=/usr/sbin/nats-server; else
      say nats "FAILED: nats-server is not installed and could not be installed (need root and apt)"
      failed=1; return
    fi
  fi
  if ! port_open "$NATS_PORT"; then
    mkdir -p /var/lib/nats-server 2>/dev/null
    start-stop-daemon --start --oknodo --background --exec "$bin" -- \
      -a 127.0.0.1 -p "$NATS_PORT" -js -sd /var/lib/nats-server -l /var/log/nats-server.log >/dev/null 2>&1
    if ! wait_for "$WAIT_SECONDS" nats_jetstream; then
      say nats "FAILED: did not start with JetStream on 127.0.0.1:$NATS_PORT; see /var/log/nats-server.log"
      failed=1; return
    fi
    did+=("started")
  fi
  if ! nats_jetstream; then
    say nats "FAILED: a server answers on 127.0.0.1:$NATS_PORT but JetStream is off; restart it with -js"
    failed=1; return
  fi
  local version
  version=$(nats_info | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')
  if [ ${#did[@]} -eq 0 ]; then
    say nats "already running $version with JetStream on 127.0.0.1:$NATS_PORT; nothing to do"
  else
    say nats "$(IFS=,; echo "${did[*]}" | sed 's/,/, /g'); running $version with JetStream on 127.0.0.1:$NATS_PORT"
  fi
}

main() {
  local only=${1:-all}
  case "$only" in
    all) ensure_postgres; ensure_pg_extra; ensure_pg_replicas; ensure_redis; ensure_nats ;;
    postgres) ensure_postgres; ensure_pg_extra; ensure_pg_replicas ;;
    pg-replica)
      [ $# -eq 3 ] || { echo "usage: scripts/services.sh pg-replica NAME PORT" >&2; return 2; }
      ensure_postgres; ensure_pg_replica "$2" "$3" ;;
    pg-replica-drop)
      [ $# -eq 2 ] || { echo "usage: scripts/services.sh pg-replica-drop NAME" >&2; return 2; }
      drop_pg_replica "$2" ;;
    pg-cluster)
      [ $# -eq 3 ] || { echo "usage: scripts/services.sh pg-cluster NAME PORT" >&2; return 2; }
      ensure_pg_cluster "$2" "$3" ;;
    redis) ensure_redis ;;
    nats) ensure_nats ;;
    -h|--help)
      sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
      echo "usage: scripts/services.sh [all|postgres|redis|nats|pg-cluster NAME PORT|pg-replica NAME PORT|pg-replica-drop NAME]"
      return 0 ;;
    *) echo "usage: scripts/services.sh [all|postgres|redis|nats|pg-cluster NAME PORT|pg-replica NAME PORT|pg-replica-drop NAME]" >&2; return 2 ;;
  esac
  return "$failed"
}

main "$@"
