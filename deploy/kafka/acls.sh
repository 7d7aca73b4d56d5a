#!/bin/sh
# flashsale's Kafka users and ACLs: one SASL/SCRAM user per role, each allowed only what the role does.
# Idempotent: run it again after changing a password or the prefix. Needs the Kafka CLI (3.7+).
#
#   BOOTSTRAP          broker listener with SASL (e.g. kafka-1:9092), reached as ADMIN_USER
#   CONTROLLER         controller listener (e.g. kafka-1:9093): SCRAM users are created there
#                      (kafka-configs --bootstrap-controller, KIP-919), before any broker user exists
#   PREFIX             topic prefix (FLASHSALE_TOPIC_PREFIX, default flashsale.)
#   APP_ID             the workers' Faust app id = consumer group (FLASHSALE_APP_ID, default flashsale-worker)
#   ADMIN_USER         the brokers' own user (inter-broker, super user), default admin
#   *_PASSWORD         ADMIN_PASSWORD, WORKER_PASSWORD, GATEWAY_PASSWORD, PUBLISHER_PASSWORD, OPS_PASSWORD
#
# Roles (docs/SECURITY.md, "Kafka principals"):
#   worker     reads orders and engagement; the only writer of order-decisions, alerts and dead-letter;
#              its consumer group and Faust's own topics (APP_ID-*)
#   gateway    writes orders and engagement; reads order-decisions (no group: it assigns partitions)
#   publisher  backend services using the SDK or any Kafka client (payments, merchant backend): same as
#              the gateway. Kafka ACLs stop at the topic: a principal that may write orders may write any
#              order-side event type, so only trusted services get one; everyone else uses the gateway,
#              whose tokens carry per-event-type scopes
#   ops        the topics job and `flashsale audit`: creates and describes the topics, reads every topic
#              (the audit assigns partitions: no consumer group)
#   dashboard and read API: no Kafka access (they read Redis)
set -eu

BIN=${KAFKA_BIN:-/opt/kafka/bin}
PREFIX=${PREFIX:-flashsale.}
APP_ID=${APP_ID:-flashsale-worker}
ADMIN_USER=${ADMIN_USER:-admin}
MECHANISM=SCRAM-SHA-512
: "${BOOTSTRAP:?set BOOTSTRAP}" "${CONTROLLER:?set CONTROLLER}"
: "${ADMIN_PASSWORD:?}" "${WORKER_PASSWORD:?}" "${GATEWAY_PASSWORD:?}" "${PUBLISHER_PASSWORD:?}" "${OPS_PASSWORD:?}"

ADMIN_CONFIG=$(mktemp)
trap 'rm -f "$ADMIN_CONFIG"' EXIT
cat > "$ADMIN_CONFIG" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=$MECHANISM
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$ADMIN_USER" password="$ADMIN_PASSWORD";
EOF

user() {  # user NAME PASSWORD
  "$BIN/kafka-configs.sh" --bootstrap-controller "$CONTROLLER" --alter --entity-type users --entity-name "$1" \
    --add-config "$MECHANISM=[iterations=8192,password=$2]"
}

allow() {  # allow USER OPERATION... -- RESOURCE-ARGS...
  principal=$1; shift
  ops=""
  while [ "$1" != "--" ]; do ops="$ops --operation $1"; shift; done
  shift
  # shellcheck disable=SC2086
  "$BIN/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG" --add \
    --allow-principal "User:$principal" $ops "$@"
}

topic() { echo "--topic ${PREFIX}$1"; }

user "$ADMIN_USER" "$ADMIN_PASSWORD"
user worker "$WORKER_PASSWORD"
user gateway "$GATEWAY_PASSWORD"
user publisher "$PUBLISHER_PASSWORD"
user ops "$OPS_PASSWORD"

# worker
for t in orders engagement; do allow worker Read Describe -- $(topic $t); done
for t in order-decisions alerts dead-letter; do allow worker Write Describe -- $(topic $t); done
allow worker Read Write Create Describe DescribeConfigs -- --topic "$APP_ID" --resource-pattern-type prefixed
allow worker Read Describe -- --group "$APP_ID" --resource-pattern-type prefixed
allow worker IdempotentWrite -- --cluster

# gateway and publisher
for who in gateway publisher; do
  for t in orders engagement; do allow "$who" Write Describe -- $(topic $t); done
  allow "$who" Read Describe -- $(topic order-decisions)
  allow "$who" IdempotentWrite -- --cluster
done

# ops
allow ops Create Describe DescribeConfigs Read -- --topic "$PREFIX" --resource-pattern-type prefixed
allow ops Describe -- --cluster

echo "flashsale Kafka users and ACLs are in place (prefix $PREFIX, app id $APP_ID)"
