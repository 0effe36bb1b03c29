#!/usr/bin/env bash
# Starts and stops a throwaway single-node Apache Kafka 4.x broker in KRaft
# mode (one JVM that is both broker and controller) on 127.0.0.1 for the
# integration tests.
#
#   RIG_DIR=/abs/dir tests/rig/kafka.sh start
#   RIG_DIR=/abs/dir tests/rig/kafka.sh stop
#   RIG_DIR=/abs/dir tests/rig/kafka.sh restart
#   RIG_DIR=/abs/dir tests/rig/kafka.sh roundtrip
#
# `restart` brings back the broker of a RIG_DIR that was started before (it
# stops it first if it is still running) on the SAME client and controller
# ports, read from the RIG_DIR's conf/server.properties, and with its data
# (topics, records, committed offsets), so a client that stayed up can
# reconnect to the address it knew (the fault tests use this). It fails
# loudly when the RIG_DIR holds no earlier broker or when a port has been
# taken meanwhile. `start` always picks new free ports.
#
# `roundtrip` proves that the running broker works, with its own tools: a
# topic of 3 partitions, keyed records in through the console producer, back
# out through the console consumer in a consumer group, the group's committed
# offsets checked, the topic deleted. It is the rig's self-test.
#
# RIG_DIR (made by the caller) holds everything of one run: the generated
# config, the data (log.dirs, the KRaft metadata log among it), kafka.log,
# kafka.pid and kafka.env (MLGW_TEST_KAFKA=127.0.0.1:<port>, for the caller
# to `source`). The jars come from Maven Central through mvn (no tarball
# download, no Docker) and are cached per version under
# ${XDG_CACHE_HOME:-$HOME/.cache}/mlgw/.
#
# Failure is always loud: a download that fails, a JVM that dies or a broker
# that does not answer in time ends in a non-zero exit with the log's tail on
# stderr. Never a silent skip.
set -euo pipefail

# Pinned: the newest 4.x on Maven Central when this was written; it runs on
# Java 17 (Kafka 4.x brokers and tools need 17 or newer). Bumping it only
# means a new cache directory, and checking that the tools' options below
# still exist (they were renamed within 4.x).
readonly KAFKA_VERSION="4.4.0"
readonly SCALA_BINARY="2.13"
# The broker logs through SLF4J 1.7 (the slf4j-api Kafka's poms declare);
# the Kafka distribution binds it to Log4j 2 with log4j-core and the SLF4J
# 1.x binding log4j-slf4j-impl, which are not in the kafka_2.13 pom. Without
# a binding the broker logs nothing at all (SLF4J's NOP logger).
readonly LOG4J_VERSION="2.25.3"
# Pinned too: without a version Maven 3.8 falls back to the ancient 2.8.
readonly DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
# Upper bound for the broker to answer. Measured on the 2-core machine, a
# warm start (cached jars) of a new RIG_DIR takes ~4 s from `start` to the
# first answer (5-6.5 s while a build ran beside it): ~1.3 s to format the
# storage (first start only), ~2-4 s for the broker to boot, ~1 s for the
# readiness probe's own JVM; a restart ~3.2 s. The rest is margin for a
# loaded CI box.
readonly READY_TIMEOUT_S="${KAFKA_READY_TIMEOUT_S:-120}"
# How long `stop` lets the broker shut down cleanly after SIGTERM before
# SIGKILL (a clean stop takes under 1 s; a killed one recovers its logs at
# the next start).
readonly STOP_GRACE_S=15
# Upper bound for one run of a Kafka command-line tool (its own JVM).
readonly TOOL_TIMEOUT_S=60

# The classes the distribution's bin/*.sh scripts run.
readonly MAIN_BROKER="kafka.Kafka"
readonly MAIN_STORAGE="kafka.tools.StorageTool"
readonly MAIN_API_VERSIONS="org.apache.kafka.tools.BrokerApiVersionsCommand"
readonly MAIN_TOPICS="org.apache.kafka.tools.TopicCommand"
readonly MAIN_PRODUCER="org.apache.kafka.tools.ConsoleProducer"
readonly MAIN_CONSUMER="org.apache.kafka.tools.consumer.ConsoleConsumer"
readonly MAIN_GROUPS="org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

rig_prefix="rig: kafka"
log=""
# shellcheck source=tests/rig/lib.sh
. "$SCRIPT_DIR/lib.sh"

# True while $1 is a live process. kill -0 alone is not enough: a child that
# died but has not been reaped yet is a zombie, and kill -0 still succeeds.
alive() {
  local pid="$1" state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  state="$(awk '/^State:/ {print $2}' "/proc/${pid}/status" 2>/dev/null || true)"
  [[ -n "$state" && "$state" != "Z" ]]
}

# True if $1 is the broker this RIG_DIR started, so that `stop` never
# signals an unrelated process that inherited a recycled PID.
is_our_kafka() {
  local pid="$1" cmdline
  alive "$pid" || return 1
  cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *" ${MAIN_BROKER} "* && "$cmdline" == *"${RIG_DIR}/kafka-conf/server.properties"* ]]
}

# The broker's first ERROR/FATAL lines (and the two after each, where the
# exception usually is) on stderr: a broker that fails at startup logs its
# whole shutdown after the cause, so the log's tail alone rarely shows why.
show_errors() {
  local errors
  errors="$(grep -m 5 -A 2 -E '^\[[^]]*\] (ERROR|FATAL) ' "$log" 2>/dev/null || true)"
  if [[ -n "$errors" ]]; then
    echo "---- first errors in $log ----" >&2
    echo "$errors" >&2
  fi
}

# Milliseconds since the epoch; $SECONDS alone is too coarse to report with.
now_ms() {
  echo $(($(date +%s%N) / 1000000))
}

# "12.3s" for a number of milliseconds.
seconds() {
  printf '%d.%ds' $(($1 / 1000)) $(($1 % 1000 / 100))
}

cache_root() {
  echo "${XDG_CACHE_HOME:-$HOME/.cache}/mlgw/kafka-${KAFKA_VERSION}"
}

# The jars whose presence (with the marker) means a complete download of
# what this script asks for: the broker's and the logging binding's (so a
# change of either version fetches again).
required_jars() {
  local lib
  lib="$(cache_root)/lib"
  echo "${lib}/kafka_${SCALA_BINARY}-${KAFKA_VERSION}.jar"
  echo "${lib}/log4j-slf4j-impl-${LOG4J_VERSION}.jar"
}

# True when the cache holds a complete download.
jars_complete() {
  local jar
  [[ -f "$(cache_root)/.complete" ]] || return 1
  while read -r jar; do
    [[ -f "$jar" ]] || return 1
  done < <(required_jars)
}

# Downloads kafka_2.13, kafka-tools, the Log4j 2 binding and their runtime
# dependencies into the cache once. The marker is written only after mvn
# succeeded and the jars are in place, so an interrupted or failed download
# is redone from scratch next time.
ensure_jars() {
  local root lib marker staging
  root="$(cache_root)"
  lib="${root}/lib"
  marker="${root}/.complete"
  if jars_complete; then
    return 0
  fi
  mkdir -p "$root"
  # Two first runs at once (parallel CI jobs) must not fill the same directory:
  # the second waits here, then finds the marker the first one wrote.
  lock "${root}/.lock"
  if jars_complete; then
    exec 9>&- 2>/dev/null || true
    return 0
  fi

  command -v mvn >/dev/null || die "mvn not found; it is needed to fetch Kafka ${KAFKA_VERSION} from Maven Central"
  say "fetching kafka_${SCALA_BINARY} ${KAFKA_VERSION} and its dependencies with Maven (first run only)..."
  rm -rf "$lib" "${root}/lib.partial" "$marker"
  staging="${root}/lib.partial"

  # A pom of its own, so copy-dependencies resolves the exact runtime closure
  # of what the distribution's libs/ holds: the broker (kafka_2.13, which
  # brings kafka-server, -metadata, -raft, -storage, the coordinators and
  # kafka-clients), the command-line tools (kafka-tools: topics, console
  # producer and consumer, consumer groups, API versions) and Log4j 2 as the
  # SLF4J binding.
  cat >"${root}/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by tests/rig/kafka.sh: the jars of a Kafka broker and its tools. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mlgw.rig</groupId>
  <artifactId>kafka-jars</artifactId>
  <version>${KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_${SCALA_BINARY}</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>${LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>${LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
EOF

  if ! mvn -q -B -f "${root}/pom.xml" "${DEPENDENCY_PLUGIN}:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$staging" >"${root}/mvn.log" 2>&1; then
    echo "rig: ---- tail of ${root}/mvn.log ----" >&2
    tail -n 40 "${root}/mvn.log" >&2
    die "downloading Kafka ${KAFKA_VERSION} with Maven failed (see above)"
  fi
  local jar
  while read -r jar; do
    [[ -f "${staging}/$(basename "$jar")" ]] \
      || die "Maven finished but $(basename "$jar") is missing from ${staging}"
  done < <(required_jars)
  mv "$staging" "$lib"
  touch "$marker"
  exec 9>&- 2>/dev/null || true
}

# Two distinct free loopback ports below the kernel's ephemeral range, for
# the client (PLAINTEXT) and the controller listener: `restart` needs the
# same ports again (pick-ports.py says why).
pick_ports() {
  python3 "$SCRIPT_DIR/pick-ports.py" 2
}

write_config() {
  local port="$1" controller_port="$2" conf="${RIG_DIR}/kafka-conf"
  mkdir -p "$conf" "${RIG_DIR}/kafka-data" "${RIG_DIR}/kafka-tmp"

  # Single-node, test-only settings. Anything not named here keeps the
  # broker's built-in default.
  cat >"${conf}/server.properties" <<EOF
# Generated by tests/rig/kafka.sh for one test run; do not edit.

# KRaft, combined mode: this one process is the broker and the whole
# controller quorum (a static quorum of one voter).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${controller_port}
controller.listener.names=CONTROLLER

# Loopback only: clients on PLAINTEXT, the controller on its own listener.
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:${port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT

# Data and the KRaft metadata log.
log.dirs=${RIG_DIR}/kafka-data

# One broker: every internal topic with one replica.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Kafka's own test brokers use 5 (not 50) partitions for the group offsets:
# the first consumer group then does not wait for 50 logs to be created.
offsets.topic.num.partitions=5
transaction.state.log.num.partitions=5

# Tests create the topics they use; a typo must fail, not create a topic.
auto.create.topics.enable=false
# A group's first member does not wait 3 s for others to join.
group.initial.rebalance.delay.ms=0

# Two cores: keep the thread pools small.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.cleaner.threads=1
EOF

  # Everything the broker logs goes to stdout, and the JVM's stdout and
  # stderr both go to kafka.log: one file that also catches JVM-level crashes.
  cat >"${conf}/log4j2.properties" <<'EOF'
# Generated by tests/rig/kafka.sh; do not edit.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
EOF

  # The command-line tools: warnings and errors only, on stderr (as the
  # distribution's tools-log4j2 config), so their stdout is their answer.
  cat >"${conf}/tools-log4j2.properties" <<'EOF'
# Generated by tests/rig/kafka.sh; do not edit.
status = warn
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
EOF

  # The admin client of the readiness probe and the roundtrip: give up on a
  # request soon, so one stuck call does not eat the whole timeout.
  cat >"${conf}/tools.properties" <<'EOF'
# Generated by tests/rig/kafka.sh; do not edit.
request.timeout.ms=5000
default.api.timeout.ms=20000
EOF
}

# The broker's JVM flags: those of the distribution's bin/kafka-run-class.sh
# (KAFKA_JVM_PERFORMANCE_OPTS) with a small heap for a test box.
broker_flags() {
  local -a flags=(
    -Xms256m -Xmx512m
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15
    # A broker out of heap should die (and fail the tests loudly), not limp on.
    -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    -Djava.net.preferIPv4Stack=true
    "-Djava.io.tmpdir=${RIG_DIR}/kafka-tmp"
    "-Dlog4j2.configurationFile=${RIG_DIR}/kafka-conf/log4j2.properties"
    "-Dkafka.logs.dir=${RIG_DIR}"
    # No JMX: com.sun.management.jmxremote is not set (kafka-run-class.sh sets
    # it only with JMX_PORT), so nothing listens on a fixed port.
  )
  printf '%s\n' "${flags[@]}"
}

# The command-line tools' JVM flags: a short-lived client, so a small heap
# and the quickest JIT/GC to start (each tool is its own JVM).
tool_flags() {
  local -a flags=(
    -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto
    -Djava.awt.headless=true
    -Djava.net.preferIPv4Stack=true
    "-Djava.io.tmpdir=${RIG_DIR}/kafka-tmp"
    "-Dlog4j2.configurationFile=${RIG_DIR}/kafka-conf/tools-log4j2.properties"
  )
  printf '%s\n' "${flags[@]}"
}

# tool MAIN_CLASS ARGS...: runs one of Kafka's command-line tools from the
# same jars (what bin/kafka-*.sh run), bounded by TOOL_TIMEOUT_S.
tool() {
  local main="$1" lib
  shift
  lib="$(cache_root)/lib"
  local -a flags
  mapfile -t flags < <(tool_flags)
  timeout -k 5 "$TOOL_TIMEOUT_S" java "${flags[@]}" -cp "${lib}/*" "$main" "$@"
}

# A random cluster id as the StorageTool's `random-uuid` makes it (16
# random bytes, URL-safe base64 without padding, never starting with '-'),
# without a JVM of its own.
random_cluster_id() {
  python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break
'
}

# Formats the data directory once (a new cluster id, the metadata log with
# the bootstrap metadata version). Later starts and restarts keep it.
format_storage() {
  if [[ -f "${RIG_DIR}/kafka-data/meta.properties" ]]; then
    return 0
  fi
  local cluster_id
  cluster_id="$(random_cluster_id)"
  echo "rig: formatting ${RIG_DIR}/kafka-data for cluster ${cluster_id}" >>"$log"
  if ! tool "$MAIN_STORAGE" format --cluster-id "$cluster_id" \
      --config "${RIG_DIR}/kafka-conf/server.properties" >>"$log" 2>&1; then
    fail "formatting the storage in ${RIG_DIR}/kafka-data failed"
  fi
}

# The client and controller ports of the broker this RIG_DIR ran before,
# from its generated config, as "port controller_port".
previous_ports() {
  local props="${RIG_DIR}/kafka-conf/server.properties" line port controller
  [[ -f "$props" ]] || die "nothing to restart: ${props} is missing (run '$0 start' first)"
  line="$(grep -m1 '^listeners=' "$props" || true)"
  port="$(sed -nE 's/.*PLAINTEXT:\/\/127\.0\.0\.1:([0-9]+).*/\1/p' <<<"$line")"
  controller="$(sed -nE 's/.*CONTROLLER:\/\/127\.0\.0\.1:([0-9]+).*/\1/p' <<<"$line")"
  [[ "$port" =~ ^[0-9]+$ && "$controller" =~ ^[0-9]+$ ]] \
    || die "cannot read the previous ports from ${props} (listeners '${line}')"
  echo "$port $controller"
}

# True when something accepts TCP connections on 127.0.0.1:$1 (cheap: no JVM).
port_open() {
  (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Asks the broker for its API versions with its own tool; prints the tool's
# answer and succeeds only when broker 1 answered.
probe() {
  local port="$1" out
  out="$(tool "$MAIN_API_VERSIONS" --bootstrap-server "127.0.0.1:${port}" \
    --command-config "${RIG_DIR}/kafka-conf/tools.properties" 2>&1)" || {
    echo "$out"
    return 1
  }
  echo "$out"
  [[ "$out" == *"127.0.0.1:${port} (id: 1 "* ]]
}

# start [reuse]: with "reuse", the ports of the previous run in this RIG_DIR
# instead of new free ones (see `restart`).
start() {
  local reuse="${1:-}"
  local pidfile="${RIG_DIR}/kafka.pid" envfile="${RIG_DIR}/kafka.env"

  if [[ -f "$pidfile" ]] && is_our_kafka "$(cat "$pidfile")"; then
    die "already running in ${RIG_DIR} (pid $(cat "$pidfile")); run '$0 stop' first"
  fi
  rm -f "$pidfile" "$envfile"

  command -v java >/dev/null || die "java not found (Kafka ${KAFKA_VERSION} needs Java 17 or newer)"
  command -v python3 >/dev/null || die "python3 not found (needed for port picking)"
  command -v timeout >/dev/null || die "timeout (coreutils) not found"

  ensure_jars
  local lib
  lib="$(cache_root)/lib"

  local ports port controller_port
  if [[ "$reuse" == reuse ]]; then
    ports="$(previous_ports)"
  else
    ports="$(pick_ports)"
  fi
  read -r port controller_port <<<"$ports"
  [[ -n "$port" && -n "$controller_port" ]] || die "could not pick free ports"
  write_config "$port" "$controller_port"

  : >"$log"
  local started_ms
  started_ms="$(now_ms)"
  format_storage

  local -a flags
  mapfile -t flags < <(broker_flags)
  # The broker as a background child of this script, so $! is the JVM's own
  # PID. The subshell cd's into RIG_DIR so stray files (hs_err_*.log) land
  # there; exec keeps the same PID.
  (
    cd "$RIG_DIR"
    exec java "${flags[@]}" -cp "${lib}/*" "$MAIN_BROKER" "${RIG_DIR}/kafka-conf/server.properties"
  ) </dev/null >>"$log" 2>&1 &
  local pid=$!
  echo "$pid" >"$pidfile"
  # Interrupted while waiting (Ctrl-C, a CI timeout): take the broker down
  # too, rather than leave a half-started JVM behind.
  # shellcheck disable=SC2064 # expand $pid now, on purpose
  trap "echo 'rig: kafka: interrupted; stopping pid ${pid}' >&2; stop_pid ${pid}; rm -f '${pidfile}'; exit 130" INT TERM HUP

  # Until the client port accepts connections, a cheap check; then the
  # broker's own API-versions tool, until it answers, the JVM dies, or time
  # runs out.
  local answer="" deadline=$((SECONDS + READY_TIMEOUT_S))
  while :; do
    if ! alive "$pid"; then
      local rc=0
      wait "$pid" 2>/dev/null || rc=$?
      rm -f "$pidfile"
      show_errors
      fail "the Kafka JVM (pid ${pid}) exited with status ${rc} before answering on 127.0.0.1:${port}"
    fi
    if port_open "$port" && answer="$(probe "$port")"; then
      break
    fi
    if ((SECONDS >= deadline)); then
      say "last probe: $(tail -n 5 <<<"${answer:-(port ${port} not open)}")"
      stop_pid "$pid"
      rm -f "$pidfile"
      show_errors
      fail "no answer on 127.0.0.1:${port} within ${READY_TIMEOUT_S}s; stopped it"
    fi
    sleep 0.5
  done

  trap - INT TERM HUP
  echo "MLGW_TEST_KAFKA=127.0.0.1:${port}" >"$envfile"
  echo "rig: kafka ${KAFKA_VERSION} ready on 127.0.0.1:${port} (controller 127.0.0.1:${controller_port}) in $(seconds $(($(now_ms) - started_ms))) (pid ${pid})"
}

# TERM, then KILL after the grace period. Returns once the process is gone.
stop_pid() {
  local pid="$1" waited=0
  kill -TERM "$pid" 2>/dev/null || return 0
  while alive "$pid"; do
    if ((waited >= STOP_GRACE_S * 10)); then
      say "pid ${pid} still up ${STOP_GRACE_S}s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  # After SIGKILL, wait (bounded) for the kernel to take it down. When the JVM
  # is this shell's own child (start's failure paths), reap it so no zombie
  # lingers; for any other PID `wait` just fails, harmlessly.
  for _ in {1..50}; do
    if ! alive "$pid"; then
      wait "$pid" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
  say "pid ${pid} did not go away after SIGKILL"
  return 1
}

stop() {
  local pidfile="${RIG_DIR}/kafka.pid" pid
  if [[ ! -f "$pidfile" ]]; then
    echo "rig: kafka: not running (no ${pidfile})"
    return 0
  fi
  pid="$(cat "$pidfile")"
  if is_our_kafka "$pid"; then
    local t0
    t0="$(now_ms)"
    stop_pid "$pid"
    echo "rig: kafka (pid ${pid}) stopped in $(seconds $(($(now_ms) - t0)))"
  else
    echo "rig: kafka: pid ${pid} from ${pidfile} is not running"
  fi
  rm -f "$pidfile" "${RIG_DIR}/kafka.env"
}

# The self-test: a topic of 3 partitions, keyed records through the console
# producer, read back through the console consumer in a consumer group, the
# group's committed offsets checked against the partitions' ends, then the
# topic deleted. Every step is one of Kafka's own tools against the running
# broker; the first one that fails ends it with exit 1 and its output.
roundtrip() {
  local envfile="${RIG_DIR}/kafka.env" pidfile="${RIG_DIR}/kafka.pid" bootstrap pid
  [[ -f "$envfile" && -f "$pidfile" ]] || die "roundtrip: no broker running in ${RIG_DIR} (run '$0 start' first)"
  pid="$(cat "$pidfile")"
  is_our_kafka "$pid" || fail "roundtrip: the broker of ${RIG_DIR} (pid ${pid}) is not running"
  bootstrap="$(sed -n 's/^MLGW_TEST_KAFKA=//p' "$envfile")"
  [[ -n "$bootstrap" ]] || die "roundtrip: no MLGW_TEST_KAFKA in ${envfile}"
  ensure_jars

  local suffix topic group n=9 out t0
  suffix="$$-${RANDOM}"
  topic="rig-roundtrip-${suffix}"
  group="rig-roundtrip-${suffix}"
  t0="$(now_ms)"
  local cfg="${RIG_DIR}/kafka-conf/tools.properties"

  # rt_fail MESSAGE [OUTPUT]: says what went wrong (with the tool's output),
  # deletes the topic if it got that far, and exits 1.
  rt_fail() {
    say "roundtrip: $1"
    if [[ -n "${2:-}" ]]; then
      echo "---- output ----" >&2
      echo "$2" >&2
      echo "---- end of output ----" >&2
    fi
    tool "$MAIN_TOPICS" --bootstrap-server "$bootstrap" --command-config "$cfg" \
      --delete --if-exists --topic "$topic" >/dev/null 2>&1 || true
    exit 1
  }

  # 1. The topic, with 3 partitions, and the broker's word that it has them.
  out="$(tool "$MAIN_TOPICS" --bootstrap-server "$bootstrap" --command-config "$cfg" \
    --create --topic "$topic" --partitions 3 --replication-factor 1 2>&1)" \
    || rt_fail "creating topic ${topic} failed" "$out"
  out="$(tool "$MAIN_TOPICS" --bootstrap-server "$bootstrap" --command-config "$cfg" \
    --describe --topic "$topic" 2>&1)" || rt_fail "describing topic ${topic} failed" "$out"
  [[ "$out" == *"PartitionCount: 3"* ]] || rt_fail "topic ${topic} does not have 3 partitions" "$out"

  # 2. Keyed records in, acknowledged by the broker (acks=all). The console
  #    producer exits 0 even when a send failed (it only logs it): its ERROR
  #    lines count as a failure too.
  local -a sent=()
  local i
  for ((i = 1; i <= n; i++)); do
    sent+=("key-${i}:value-${i}")
  done
  out="$(printf '%s\n' "${sent[@]}" | tool "$MAIN_PRODUCER" --bootstrap-server "$bootstrap" \
    --topic "$topic" --command-property acks=all --command-property max.block.ms=20000 \
    --reader-property parse.key=true --reader-property key.separator=: 2>&1)" \
    || rt_fail "producing ${n} records to ${topic} failed" "$out"
  [[ "$out" != *" ERROR "* ]] || rt_fail "producing ${n} records to ${topic} failed" "$out"

  # 3. Back out in a consumer group: the consumer commits its offsets when it
  #    stops after the n-th record, or gives up after 30 s without one (and
  #    then also exits 0: what it printed is what is checked).
  local err="${RIG_DIR}/kafka-tmp/roundtrip-consumer.err"
  out="$(tool "$MAIN_CONSUMER" --bootstrap-server "$bootstrap" --topic "$topic" \
    --group "$group" --from-beginning --max-messages "$n" --timeout-ms 30000 \
    --formatter-property print.key=true --formatter-property key.separator=: 2>"$err")" \
    || rt_fail "consuming ${topic} in group ${group} failed" "${out}"$'\n'"$(cat "$err")"
  local want got
  want="$(printf '%s\n' "${sent[@]}" | sort)"
  got="$(grep -E '^key-[0-9]+:' <<<"$out" | sort || true)"
  [[ "$got" == "$want" ]] \
    || rt_fail "the records consumed are not the ${n} produced (want: $(tr '\n' ' ' <<<"$want"))" "${out}"$'\n'"$(cat "$err")"

  # 4. The group's committed offsets: every partition committed up to its
  #    end (no lag), n in all.
  out="$(tool "$MAIN_GROUPS" --bootstrap-server "$bootstrap" --command-config "$cfg" \
    --describe --offsets --group "$group" 2>&1)" || rt_fail "describing group ${group} failed" "$out"
  local committed
  committed="$(awk -v t="$topic" '
    $2 == t { parts++; if ($4 !~ /^[0-9]+$/ || $4 != $5) bad++; sum += $4; spread = spread " p" $3 "=" $4 }
    END { if (parts != 3 || bad) exit 1; printf "%d%s", sum, spread }' <<<"$out")" \
    || rt_fail "group ${group} has not committed all 3 partitions of ${topic} up to their end" "$out"
  [[ "${committed%% *}" == "$n" ]] || rt_fail "group ${group} committed ${committed%% *} records, not ${n}" "$out"

  # 5. The topic deleted (its committed offsets go with it).
  out="$(tool "$MAIN_TOPICS" --bootstrap-server "$bootstrap" --command-config "$cfg" \
    --delete --topic "$topic" 2>&1)" || rt_fail "deleting topic ${topic} failed" "$out"

  echo "rig: kafka roundtrip ok on ${bootstrap}: ${n} keyed records through ${topic} (3 partitions: ${committed#* }), consumed and committed by group ${group}, topic deleted, in $(seconds $(($(now_ms) - t0)))"
}

usage() {
  die "usage: RIG_DIR=/abs/dir $0 start|stop|restart|roundtrip"
}

main() {
  [[ $# -eq 1 ]] || usage
  [[ -n "${RIG_DIR:-}" ]] || die "RIG_DIR must be set to a directory the caller created"
  [[ -d "$RIG_DIR" ]] || die "RIG_DIR=${RIG_DIR} is not a directory"
  # Absolute, so the config and the PID check do not depend on the cwd.
  RIG_DIR="$(cd "$RIG_DIR" && pwd -P)"
  log="${RIG_DIR}/kafka.log"
  case "$1" in
    start) start ;;
    stop) stop ;;
    restart)
      # Read the ports first, so a RIG_DIR without a previous broker fails
      # before anything is stopped.
      previous_ports >/dev/null
      stop
      start reuse
      ;;
    roundtrip) roundtrip ;;
    *) usage ;;
  esac
}

main "$@"
