"""The emulator's ceiling: prebuilt PutRecords calls (COUNT records of SIZE bytes, random
keys) sent back to back from 8 threads for 10 seconds by a client doing nothing else."""

import json
import os
import sys
import threading
import time

import boto3


def main():
    stream, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    entries = [{"PartitionKey": os.urandom(8).hex(), "Data": b"x" * size} for _ in range(count)]
    stop = time.time() + 10
    counts = {"calls": 0, "records": 0, "failed": 0}
    lock = threading.Lock()

    def worker():
        client = boto3.client("kinesis")
        while time.time() < stop:
            out = client.put_records(StreamName=stream, Records=entries)
            with lock:
                counts["calls"] += 1
                counts["records"] += count - out.get("FailedRecordCount", 0)
                counts["failed"] += out.get("FailedRecordCount", 0)

    started = time.time()
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - started
    print(json.dumps({"size": size, "records_per_call": count, "records_per_s": round(counts["records"] / seconds),
                      "mb_per_s": round(counts["records"] * size / seconds / 1e6, 2),
                      "calls_per_s": round(counts["calls"] / seconds, 1), "failed": counts["failed"]}))


main()
