"""AWS's aws-kinesis-agg 1.2.3 aggregator (51,200 B aggregates, one per predicted shard is
not something it does: one open aggregate for all keys, as its README shows) and boto3
PutRecords of up to 500 records / 5 MiB, failed entries retried."""

import boto3
from aws_kinesis_agg.aggregator import RecordAggregator

from common import args, records, report


def main():
    stream, n, size, keys = args()
    client = boto3.client("kinesis")
    aggregator = RecordAggregator(max_size=51_200)
    batch, batch_bytes, calls, kinesis_records, failed = [], 0, 0, 0, 0

    def send(entries):
        nonlocal calls, failed
        for _ in range(10):
            calls += 1
            out = client.put_records(StreamName=stream, Records=entries)
            if out.get("FailedRecordCount", 0) == 0:
                return
            entries = [e for e, r in zip(entries, out["Records"]) if "ErrorCode" in r]
        failed += len(entries)

    def add(record):
        nonlocal batch, batch_bytes, kinesis_records
        key, ehk, data = record.get_contents()
        entry = {"PartitionKey": key, "Data": data}
        if ehk:
            entry["ExplicitHashKey"] = ehk.decode() if isinstance(ehk, bytes) else str(ehk)
        if len(batch) == 500 or batch_bytes + len(data) + len(key) > 5 * 1024 * 1024:
            send(batch)
            batch, batch_bytes = [], 0
        batch.append(entry)
        batch_bytes += len(data) + len(key)
        kinesis_records += 1

    for key, data in records(n, size, keys):
        full = aggregator.add_user_record(key, data.encode())
        if full is not None:
            add(full)
    last = aggregator.clear_and_get()
    if last is not None:
        add(last)
    if batch:
        send(batch)
    report(sent=n, failed=failed, kinesis_records=kinesis_records, put_records_calls=calls)


main()
