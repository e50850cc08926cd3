# shellcheck shell=bash
# Variables such as $resources and $STACK_DIR are scripts/stack's.
# shellcheck disable=SC2154
# The MariaDB part of scripts/stack (sourced by it; uses its helpers: step,
# fail, wait_until, pid_alive, ensure_port_free, apt_install, mvn_copy,
# connect_url, connector_status_of, bootstrap_servers,
# replication_factor, min_insync). Started only when asked for
# (`scripts/stack up --with mariadb` or CDC_WITH_MARIADB=1), so the default
# stack stays as fast as before.
#
# MariaDB from Debian's packages, on loopback, with a row-based binlog that
# logs whole rows (binlog_format=ROW, binlog_row_image=FULL: the old values
# key templates need) and GTIDs in strict mode, a `shop` database and a
# replication user. Its connector is Debezium's MariaDB connector at
# 3.5.0.Final, the newest on Maven Central (there is no 3.6.x of it); the
# MySQL connector at the stack's 3.6.1.Final refuses MariaDB 10.11 ("should
# support SHOW BINARY LOG STATUS but it failed": it reads 10.11 as a MySQL
# version). Connect gives each plugin directory its own class loader, so the
# two Debezium versions run side by side in one worker.

MARIADB_PORT=${CDC_MARIADB_PORT:-3306}
MARIADB_DB=shop
MARIADB_USER=cdc
MARIADB_PASSWORD=cdc
MARIADB_CONNECTOR=shop-mariadb
MARIADB_TOPIC_PREFIX=mariadb
# The connector joins the replication topology as a replica with this id;
# it must differ from the server's own (1).
MARIADB_CLIENT_SERVER_ID=5401
MARIADB_DEBEZIUM_VERSION=3.5.0.Final
MARIADB_PLUGIN="$(dirname "$DEBEZIUM_PLUGIN")/debezium-connector-mariadb-$MARIADB_DEBEZIUM_VERSION"

mariadb_wanted() {
  [[ "${CDC_WITH_MARIADB:-0}" == 1 ]]
}

# MariaDB drops root to the mysql user, which must reach its data folder:
# under a private folder (e.g. /root) the data and its log go to /var/tmp.
mariadb_home() {
  if runuser -u mysql -- test -x "$STACK_DIR" 2>/dev/null; then
    echo "$STACK_DIR"
  else
    echo "/var/tmp/cdc-invalidator-$(printf '%s' "$STACK_DIR" | md5sum | cut -c1-12)"
  fi
}

mariadb_sql() {
  mariadb --protocol=tcp -h 127.0.0.1 -P "$MARIADB_PORT" -u root --connect-timeout=5 -N -B "$@"
}

install_mariadb() {
  if ! command -v mariadbd >/dev/null 2>&1 && [[ ! -x /usr/sbin/mariadbd ]] || ! command -v mariadb >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || fail "install" "MariaDB is not installed and not root to apt-get install it"
    apt_install mariadb-server mariadb-client
  fi
  mvn_copy "$resources/maven/debezium-mariadb" "$MARIADB_PLUGIN" "connect-api,kafka-clients"
}

start_mariadb() {
  local home data log pidfile
  home=$(mariadb_home)
  data="$home/mariadb"
  log="$LOGS/mariadb.log"
  [[ "$home" == "$STACK_DIR" ]] || log="$home/mariadb.log"
  pidfile="$PIDS/mariadb.pid"
  if pid_alive mariadb; then
    step "mariadb already running on 127.0.0.1:$MARIADB_PORT"
    provision_mariadb
    return 0
  fi
  ensure_port_free mariadb "$MARIADB_PORT" CDC_MARIADB_PORT
  if [[ ! -d "$data/mysql" ]]; then
    step "initialising mariadb in $data"
    mkdir -p "$data"
    chown mysql:mysql "$data"
    mariadb-install-db --no-defaults --datadir="$data" --user=mysql \
      --auth-root-authentication-method=normal --skip-test-db >"$log" 2>&1 ||
      fail mariadb "mariadb-install-db failed" "$log"
  fi
  touch "$log" && chown mysql:mysql "$log"
  step "starting mariadb on 127.0.0.1:$MARIADB_PORT (row binlog, full row image, GTIDs)"
  # --no-defaults: a system my.cnf never leaks in. The binlog settings are
  # what Debezium's binlog reader needs; sync_binlog/flush settings are off
  # because the stack is for tests and a restart may lose the last second.
  nohup /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$data" \
    --bind-address=127.0.0.1 --port="$MARIADB_PORT" --socket="$data/mariadb.sock" \
    --pid-file="$data/mariadb.pid" --log-error="$log" \
    --server-id=1 --log-bin=mysql-bin --binlog-format=ROW --binlog-row-image=FULL \
    --gtid-domain-id=0 --gtid-strict-mode=1 --log-slave-updates=1 \
    --binlog-expire-logs-seconds=86400 --character-set-server=utf8mb4 \
    --collation-server=utf8mb4_general_ci --skip-name-resolve \
    --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 \
    --max-connections=200 >>"$log" 2>&1 9>&- &
  echo $! >"$pidfile"
  wait_until mariadb "$log" "a connection on port $MARIADB_PORT" mariadb_sql -e 'select 1'
  provision_mariadb
}

provision_mariadb() {
  # The replication user owns the demo database and reads the binlog:
  # REPLICATION SLAVE to stream it, BINLOG MONITOR (MariaDB's name for
  # REPLICATION CLIENT) for SHOW MASTER STATUS, RELOAD for FLUSH BINARY LOGS.
  mariadb_sql <<SQL || fail mariadb "provisioning database $MARIADB_DB and user $MARIADB_USER failed" "$LOGS/mariadb.log"
CREATE DATABASE IF NOT EXISTS $MARIADB_DB;
CREATE USER IF NOT EXISTS '$MARIADB_USER'@'%' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT SELECT, RELOAD, SHOW DATABASES, LOCK TABLES, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '$MARIADB_USER'@'%';
GRANT ALL ON $MARIADB_DB.* TO '$MARIADB_USER'@'%';
SQL
}

stop_mariadb() {
  if pid_alive mariadb; then
    mariadb_sql -e 'SHUTDOWN' >/dev/null 2>&1 || kill "$(cat "$PIDS/mariadb.pid")" 2>/dev/null || true
    wait_gone mariadb
  fi
  rm -f "$PIDS/mariadb.pid"
}

# Connect scans plugin.path once, at start: a worker started before the
# MariaDB connector was fetched must be restarted to load it.
ensure_mariadb_plugin_loaded() {
  if pid_alive connect && ! curl -sf "$(connect_url)/connector-plugins" | grep -q MariaDbConnector; then
    step "restarting kafka connect to load the Debezium MariaDB connector"
    stop_java connect
  fi
}

register_mariadb_connector() {
  local log="$LOGS/connect.log" config answer
  wait_until connect "$log" "the Debezium MariaDB plugin to be listed" \
    bash -c "curl -sf '$(connect_url)/connector-plugins' | grep -q MariaDbConnector"
  config=$(sed -e "s|@MARIADB_PORT@|$MARIADB_PORT|g" -e "s|@MARIADB_DB@|$MARIADB_DB|g" \
    -e "s|@MARIADB_USER@|$MARIADB_USER|g" -e "s|@MARIADB_PASSWORD@|$MARIADB_PASSWORD|g" \
    -e "s|@CLIENT_SERVER_ID@|$MARIADB_CLIENT_SERVER_ID|g" -e "s|@BOOTSTRAP@|$(bootstrap_servers)|g" \
    -e "s|@REPLICATION_FACTOR@|$(replication_factor)|g" -e "s|@MIN_INSYNC@|$(min_insync)|g" \
    -e "s|@TOPIC_PREFIX@|$MARIADB_TOPIC_PREFIX|g" "$resources/debezium-mariadb.json")
  answer=$(curl -s -o /dev/stderr -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
    --data "$config" "$(connect_url)/connectors/$MARIADB_CONNECTOR/config" 2>"$STACK_DIR/connector-answer.json") || true
  case "$answer" in
    200 | 201) ;;
    *) fail connect "registering connector $MARIADB_CONNECTOR answered HTTP $answer: $(head -c 400 "$STACK_DIR/connector-answer.json")" "$log" ;;
  esac
  # A task that failed while MariaDB was down (a plain `up` starts Connect,
  # which runs every registered connector) stays FAILED until restarted: an
  # unchanged config does not restart it.
  local state
  state=$(connector_status "$MARIADB_CONNECTOR" 2>/dev/null) || true
  if grep -q FAILED <<<"$state"; then
    step "restarting the failed tasks of connector $MARIADB_CONNECTOR"
    curl -sf -X POST "$(connect_url)/connectors/$MARIADB_CONNECTOR/restart?includeTasks=true&onlyFailed=true" >/dev/null ||
      fail connect "could not restart connector $MARIADB_CONNECTOR" "$log"
    wait_until connect "$log" "connector $MARIADB_CONNECTOR to leave FAILED" \
      bash -c "! curl -sf '$(connect_url)/connectors/$MARIADB_CONNECTOR/status' | grep -q FAILED"
  fi
  wait_until connect "$log" "connector $MARIADB_CONNECTOR and its task to be RUNNING" connector_running_named "$MARIADB_CONNECTOR"
  step "debezium connector $MARIADB_CONNECTOR is RUNNING (topics ${MARIADB_TOPIC_PREFIX}.$MARIADB_DB.<table>)"
}

mariadb_env() {
  pid_alive mariadb || return 0
  cat <<EOF
export CDC_MARIADB_URL=mysql://$MARIADB_USER:$MARIADB_PASSWORD@127.0.0.1:$MARIADB_PORT/$MARIADB_DB
export CDC_MARIADB_TOPIC_PREFIX=$MARIADB_TOPIC_PREFIX
export CDC_MARIADB_CONNECTOR=$MARIADB_CONNECTOR
EOF
}
