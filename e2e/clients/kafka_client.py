#!/usr/bin/env python3
"""A real Kafka client for Streamward's end-to-end tests: confluent-kafka (librdkafka).

Each subcommand does one thing a user's application does and prints one JSON object on its
last line, so a test can assert on what the client saw, errors included.

  produce  --bootstrap B --topic T --count N [--prefix P] [--compression C] [--acks A]
           [--stdin] [--header NAME=VALUE ...]
  consume  --bootstrap B --topic T --count N [--group G] [--timeout S]

Both take --config key=value (librdkafka settings, repeatable) and --oauth-token JWT (SASL
OAUTHBEARER with that token, handed over by an oauth_cb: librdkafka cannot send a signed token
from its settings alone). Errors the client reports outside deliveries and messages (failed
authentication, for one) are listed as "client_errors".
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer


CLIENT_ERRORS = []


def on_error(err):
    if len(CLIENT_ERRORS) < 20:
        CLIENT_ERRORS.append(err.str())


def common(args):
    conf = {"bootstrap.servers": args.bootstrap, "client.id": args.client_id,
            "error_cb": on_error}
    for item in args.config or []:
        key, _, value = item.partition("=")
        conf[key] = value
    if args.oauth_token:
        token, principal = args.oauth_token, args.oauth_principal
        conf.update({"security.protocol": conf.get("security.protocol", "SASL_PLAINTEXT"),
                     "sasl.mechanisms": "OAUTHBEARER",
                     "oauth_cb": lambda _config: (token, time.time() + 3600, principal)})
    return conf


def produce(args):
    conf = common(args)
    conf.update({"acks": args.acks, "compression.type": args.compression,
                 "linger.ms": 5, "message.timeout.ms": int(args.timeout * 1000)})
    producer = Producer(conf)
    delivered, errors = 0, []

    def on_delivery(err, msg):
        nonlocal delivered
        if err is None:
            delivered += 1
        elif len(errors) < 5:
            errors.append(err.str())

    values = sys.stdin.read().splitlines() if args.stdin else None
    count = len(values) if values is not None else args.count
    headers = [tuple(item.split("=", 1)) for item in args.header or []]
    for i in range(count):
        value = values[i] if values is not None else f"{args.prefix}-{i}"
        while True:
            try:
                producer.produce(args.topic, value=value.encode(), key=str(i).encode(),
                                 headers=headers or None, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(args.timeout)
    print(json.dumps({"delivered": delivered, "undelivered": remaining, "errors": errors,
                      "client_errors": CLIENT_ERRORS}))
    return 0 if delivered == count else 1


def consume(args):
    conf = common(args)
    conf.update({"group.id": args.group, "auto.offset.reset": "earliest",
                 "enable.auto.commit": True})
    consumer = Consumer(conf)
    assignments = []

    def on_assign(c, partitions):
        assignments.append(sorted(p.partition for p in partitions))

    consumer.subscribe([args.topic], on_assign=on_assign)
    values, errors = [], []
    deadline = time.monotonic() + args.timeout
    # --stay: keep polling for the whole --timeout (a group member), not just until --count.
    try:
        while (args.stay or len(values) < args.count) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    errors.append(msg.error().name())
                    if msg.error().fatal() or len(errors) > 20 or args.stop_on_error:
                        break
                continue
            values.append(msg.value().decode(errors="replace"))
    except KafkaException as exc:
        errors.append(exc.args[0].name())
    finally:
        consumer.close()
    print(json.dumps({"count": len(values), "values": values if args.print_values else None,
                      "errors": sorted(set(errors)), "assignments": assignments,
                      "client_errors": CLIENT_ERRORS}))
    return 0 if len(values) >= args.count else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("produce", "consume"):
        p = sub.add_parser(name)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic", required=True)
        p.add_argument("--count", type=int, default=0)
        p.add_argument("--client-id", default=f"streamward-e2e-{name}")
        p.add_argument("--timeout", type=float, default=60.0)
        p.add_argument("--config", action="append", help="extra librdkafka key=value")
        p.add_argument("--oauth-token", help="authenticate with SASL OAUTHBEARER and this JWT")
        p.add_argument("--oauth-principal", default="streamward-e2e",
                       help="the principal name librdkafka records for the token")
    produce_p = sub.choices["produce"]
    produce_p.add_argument("--prefix", default="record")
    produce_p.add_argument("--stdin", action="store_true", help="one value per input line")
    produce_p.add_argument("--acks", default="all")
    produce_p.add_argument("--compression", default="none")
    produce_p.add_argument("--header", action="append", help="a record header NAME=VALUE")
    consume_p = sub.choices["consume"]
    consume_p.add_argument("--group", default="streamward-e2e")
    consume_p.add_argument("--print-values", action="store_true")
    consume_p.add_argument("--stop-on-error", action="store_true")
    consume_p.add_argument("--stay", action="store_true",
                           help="keep consuming until --timeout even after --count records")
    args = parser.parse_args()
    return {"produce": produce, "consume": consume}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
