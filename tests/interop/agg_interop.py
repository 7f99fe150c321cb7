"""Drives AWS's Python aws-kinesis-agg for the interop test (tests/tests/aggregation_interop.rs).

    python agg_interop.py decode < kinesis_records.json   -> user records as AWS's deaggregator sees them
    python agg_interop.py encode < record_sets.json       -> one Kinesis record per set, aggregated by AWS's aggregator

Bytes travel as base64. Input and output are JSON documents on stdin / stdout.
"""
import base64
import json
import sys

from aws_kinesis_agg import aggregator, deaggregator


def decode(kinesis_records):
    out = []
    for i, record in enumerate(kinesis_records):
        event = {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": record["partition_key"],
                "explicitHashKey": record.get("explicit_hash_key"),
                "sequenceNumber": str(i),
                "approximateArrivalTimestamp": 0,
                "data": record["data"],
            }
        }
        users = []
        for user in deaggregator.iter_deaggregate_records([event]):
            k = user["kinesis"]
            data = k["data"]
            users.append(
                {
                    "partition_key": k["partitionKey"],
                    "explicit_hash_key": k.get("explicitHashKey"),
                    "sub_sequence_number": k.get("subSequenceNumber", 0),
                    "aggregated": bool(k.get("aggregated", False)),
                    "data": data.decode() if isinstance(data, bytes) else data,
                }
            )
        out.append(users)
    return out


def encode(record_sets):
    out = []
    for records in record_sets:
        agg = aggregator.RecordAggregator()
        for r in records:
            if agg.add_user_record(r["partition_key"], base64.b64decode(r["data"]), r.get("explicit_hash_key")) is not None:
                raise SystemExit("record set does not fit in one aggregate: keep test sets small")
        partition_key, explicit_hash_key, data = agg.clear_and_get().get_contents()
        out.append(
            {
                "partition_key": partition_key,
                "explicit_hash_key": explicit_hash_key,
                "data": base64.b64encode(data).decode(),
            }
        )
    return out


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode not in ("decode", "encode"):
        raise SystemExit("usage: agg_interop.py decode|encode < input.json")
    json.dump((decode if mode == "decode" else encode)(json.load(sys.stdin)), sys.stdout)
