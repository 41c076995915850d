#!/usr/bin/env python3
"""A third-party Kafka client (confluent-kafka, the original design's producer library)
talking to the VT.PGA pipeline.

  produce: publishes --count SPEC §3 transactions between users of --users (keyed by
           payer, event time now in Brasília time) and writes their ids to --ids.
  verify:  reads the decisions topic from the beginning and checks that every id in --ids
           has exactly one decision, with a status of SPEC §5 other than invalid or late.
           Prints `status NAME=COUNT` lines; exits 1 on any failure.
  debezium: publishes SPEC §11 Debezium change events (as a CDC connector of the bank's
           `users` and `regions` tables would: with and without the schema envelope) to the
           control topic, stamped --timestamp-ms: a user created (`dbz-new`, home the first
           region of --users), the second user of --users updated (limit 0) and the third
           deleted, a region re-created with new coordinates. Writes nothing else.
"""
import argparse
import csv
import json
import random
import sys
from datetime import datetime, timedelta, timezone

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition, OFFSET_BEGINNING

STATUSES = {"invalid", "late", "duplicate", "unknown_reference", "stale",
            "insufficient_balance", "insufficient_limit", "rejected_risk", "approved"}
MODES = ["pix", "Débito", "CREDITO", "boleto"]
BRT = timezone(timedelta(hours=-3))


def produce(args):
    with open(args.users, newline="") as f:
        users = [(row["id"], row["region_id"]) for row in csv.DictReader(f)]
    rng = random.Random(7)
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 5})
    errors = []
    ids = []
    for i in range(args.count):
        payer, region = rng.choice(users)
        payee, _ = rng.choice([u for u in users[:50] if u[0] != payer])
        tx_id = f"py-{i:06d}"
        message = {
            "id_transacao": tx_id,
            "id_usuario_pagador": payer,
            "id_usuario_recebedor": payee,
            "id_regiao": region,
            "modalidade_pagamento": MODES[i % len(MODES)],
            "data_horario": datetime.now(BRT).isoformat(timespec="milliseconds"),
            "valor_transacao": round(rng.uniform(1, 2000), 2),
        }
        producer.produce(args.topic, key=payer, value=json.dumps(message).encode(),
                         on_delivery=lambda err, _msg: err and errors.append(err))
        producer.poll(0)
        ids.append(tx_id)
    left = producer.flush(30)
    if left or errors:
        print(f"produce failed: {left} undelivered, errors {errors[:3]}", file=sys.stderr)
        return 1
    with open(args.ids, "w") as f:
        f.write("\n".join(ids) + "\n")
    print(f"produced {len(ids)} messages")
    return 0


def verify(args):
    with open(args.ids) as f:
        ids = [line.strip() for line in f if line.strip()]
    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": "interop-verify",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    partitions = consumer.list_topics(args.decisions, timeout=10).topics[args.decisions].partitions
    consumer.assign([TopicPartition(args.decisions, p, OFFSET_BEGINNING) for p in partitions])
    open_parts = set(partitions)
    decisions = {}
    failures = []
    while open_parts:
        msg = consumer.poll(5.0)
        if msg is None:
            failures.append("timed out reading decisions")
            break
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                open_parts.discard(msg.partition())
                continue
            failures.append(str(msg.error()))
            break
        record = json.loads(msg.value())
        if msg.key() is not None and record.get("id") is not None and msg.key().decode() != record["id"]:
            failures.append(f"decision keyed {msg.key()!r}, id {record['id']}")
        decisions.setdefault(record.get("id"), []).append(record)
    consumer.close()
    counts = {}
    for tx_id in ids:
        found = decisions.get(tx_id, [])
        if len(found) != 1:
            failures.append(f"{tx_id}: {len(found)} decisions")
            continue
        status = found[0]["status"]
        if status not in STATUSES or status in ("invalid", "late"):
            failures.append(f"{tx_id}: status {status} ({found[0]})")
        counts[status] = counts.get(status, 0) + 1
    for status, n in sorted(counts.items()):
        print(f"status {status}={n}")
    if failures:
        print("\n".join(failures[:20]), file=sys.stderr)
        return 1
    return 0


def debezium(args):
    with open(args.users, newline="") as f:
        users = list(csv.DictReader(f))
    first, second, third = users[0], users[1], users[2]
    events = [
        {"schema": {"type": "struct"}, "payload": {
            "op": "c", "source": {"table": "users", "db": "bank"},
            "before": None,
            "after": {"id": "dbz-new", "name": "Nova", "region_id": first["region_id"],
                      "balance_cents": 123456, "credit_limit_cents": 5000}}},
        {"op": "u", "source": {"table": "users"},
         "before": None,
         "after": {"id": second["id"], "name": second["name"], "region_id": second["region_id"],
                   "balance_cents": int(second["balance_cents"]), "credit_limit_cents": 0}},
        {"op": "d", "source": {"table": "users"}, "before": {"id": third["id"]}, "after": None},
        {"schema": {}, "payload": {
            "op": "r", "source": {"table": "regions"},
            "after": {"id": first["region_id"], "uf": "SP", "name": "moved",
                      "lat": -23.0, "lon": -46.0}}},
    ]
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 5})
    errors = []
    for i, event in enumerate(events):
        key = (event.get("payload", event).get("after") or event.get("payload", event)["before"])["id"]
        producer.produce(args.control_topic, key=key, value=json.dumps(event).encode(),
                         timestamp=args.timestamp_ms + i,
                         on_delivery=lambda err, _msg: err and errors.append(err))
        producer.poll(0)
    left = producer.flush(30)
    if left or errors:
        print(f"produce failed: {left} undelivered, errors {errors[:3]}", file=sys.stderr)
        return 1
    print(f"produced {len(events)} change events")
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["produce", "verify", "debezium"])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--users", required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--topic", default="transacoes")
    parser.add_argument("--decisions", default="transacoes-decisoes")
    parser.add_argument("--control-topic", default="transacoes-controle")
    parser.add_argument("--timestamp-ms", type=int, default=0)
    args = parser.parse_args()
    return {"produce": produce, "verify": verify, "debezium": debezium}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
