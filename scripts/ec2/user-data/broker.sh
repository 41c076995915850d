#!/bin/bash
# Role `broker`: Apache Kafka in KRaft mode (a single node that is both broker and
# controller, no ZooKeeper), then the four topics (transactions, control, decisions, dead
# letters) with KAFKA_PARTITIONS partitions and message.timestamp.type=CreateTime (the
# pipeline's arrival time is the record timestamp the producer set; see docs/running.md).
# The input topics (transactions, control) also get message.timestamp.after.max.ms =
# VTPGA_MAX_CLOCK_SKEW_MS (default 60000; SPEC §4 clock guard, Kafka >= 3.6): the broker
# refuses a record stamped further ahead of its clock. Kafka has no authentication here:
# its security group admits only the pipeline and generator instances.
#
# Reads: KAFKA_VERSION, KAFKA_SCALA_VERSION, KAFKA_PARTITIONS, KAFKA_HEAP_OPTS,
# KAFKA_RETENTION_MS, VTPGA_KAFKA_TOPIC, VTPGA_KAFKA_CONTROL_TOPIC,
# VTPGA_KAFKA_DECISIONS_TOPIC, VTPGA_KAFKA_DLQ_TOPIC, VTPGA_MAX_CLOCK_SKEW_MS.
# (Appended to common.sh by scripts/ec2/up.sh.)

install_packages ca-certificates curl openjdk-17-jre-headless

ip="$(imds local-ipv4)"
version="${KAFKA_VERSION:-3.9.1}"
scala="${KAFKA_SCALA_VERSION:-2.13}"
tarball="kafka_${scala}-${version}.tgz"
url="https://archive.apache.org/dist/kafka/${version}/${tarball}"
log "installing Apache Kafka $version from $url"
curl -fsSL --retry 5 -o "/tmp/$tarball" "$url"
# The .sha512 file is either `NAME: HEX HEX ...` (gpg --print-md) or `HEX  NAME`.
sums="$(curl -fsSL --retry 5 "$url.sha512")"
if [[ "$sums" == *:* ]]; then
    expected="$(echo "$sums" | tr -d ' \r\n' | cut -d: -f2 | tr 'A-F' 'a-f')"
else
    expected="$(echo "$sums" | awk '{print tolower($1)}')"
fi
actual="$(sha512sum "/tmp/$tarball" | cut -d' ' -f1)"
[ "$expected" = "$actual" ] || { log "checksum mismatch for $tarball"; exit 1; }
mkdir -p /opt/kafka
tar -xzf "/tmp/$tarball" -C /opt/kafka --strip-components 1
rm -f "/tmp/$tarball"
id kafka >/dev/null 2>&1 || useradd --system --home-dir /var/lib/kafka --create-home --shell /usr/sbin/nologin kafka

cat >/opt/kafka/config/vtpga-kraft.properties <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@${ip}:9093
listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093
advertised.listeners=PLAINTEXT://${ip}:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=/var/lib/kafka/data
num.partitions=${KAFKA_PARTITIONS:-4}
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.message.timestamp.type=CreateTime
PROPS
# Kafka's own logs go to $LOG_DIR (default /opt/kafka/logs, which the kafka user cannot write).
export LOG_DIR=/var/lib/kafka/logs
install -d -o kafka -g kafka "$LOG_DIR"
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
    runuser -u kafka -- /opt/kafka/bin/kafka-storage.sh format \
        -t "$(runuser -u kafka -- /opt/kafka/bin/kafka-storage.sh random-uuid)" \
        -c /opt/kafka/config/vtpga-kraft.properties
fi
mkdir -p /etc/vtpga
cat >/etc/vtpga/kafka.env <<ENV
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx2g -Xms2g}"
LOG_DIR="$LOG_DIR"
ENV
service kafka kafka "Apache Kafka (KRaft, single node)" \
    /opt/kafka/bin/kafka-server-start.sh /opt/kafka/config/vtpga-kraft.properties
wait_tcp 127.0.0.1 9092

skew="${VTPGA_MAX_CLOCK_SKEW_MS:-60000}"
inputs=("${VTPGA_KAFKA_TOPIC:-transacoes}" "${VTPGA_KAFKA_CONTROL_TOPIC:-transacoes-controle}")
outputs=("${VTPGA_KAFKA_DECISIONS_TOPIC:-transacoes-decisoes}" "${VTPGA_KAFKA_DLQ_TOPIC:-transacoes-dlq}")
create_topic() { # TOPIC [--config K=V]...
    local topic=$1
    shift
    /opt/kafka/bin/kafka-topics.sh --bootstrap-server 127.0.0.1:9092 --create --if-not-exists \
        --topic "$topic" --partitions "${KAFKA_PARTITIONS:-4}" --replication-factor 1 \
        --config message.timestamp.type=CreateTime \
        --config retention.ms="${KAFKA_RETENTION_MS:-604800000}" "$@"
}
for topic in "${inputs[@]}"; do
    create_topic "$topic" --config "message.timestamp.after.max.ms=$skew"
    # Also on a topic that existed already (created before this setting).
    /opt/kafka/bin/kafka-configs.sh --bootstrap-server 127.0.0.1:9092 --entity-type topics \
        --entity-name "$topic" --alter --add-config "message.timestamp.after.max.ms=$skew"
done
for topic in "${outputs[@]}"; do
    create_topic "$topic"
done
/opt/kafka/bin/kafka-topics.sh --bootstrap-server 127.0.0.1:9092 --describe
log "broker ready on $ip:9092"
