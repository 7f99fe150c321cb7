"""A plain boto3 PutRecords loop: 500 records per call, no aggregation, failed entries
retried."""

import boto3

from common import args, records, report


def main():
    stream, n, size, keys = args()
    client = boto3.client("kinesis")
    calls, failed, batch = 0, 0, []

    def send(entries):
        nonlocal calls, failed
        for _ in range(10):
            calls += 1
            out = client.put_records(StreamName=stream, Records=entries)
            if out.get("FailedRecordCount", 0) == 0:
                return
            entries = [e for e, r in zip(entries, out["Records"]) if "ErrorCode" in r]
        failed += len(entries)

    for key, data in records(n, size, keys):
        batch.append({"PartitionKey": key, "Data": data.encode()})
        if len(batch) == 500:
            send(batch)
            batch = []
    if batch:
        send(batch)
    report(sent=n, failed=failed, kinesis_records=n, put_records_calls=calls)


main()
