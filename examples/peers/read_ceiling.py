"""The emulator's read ceiling: every shard of STREAM read from TRIM_HORIZON with boto3
GetRecords (one thread per shard, no pause, no deaggregation, no checkpoints) by a client
doing nothing else. Prints when the first and the last Kinesis record arrived."""

import json
import sys
import threading
import time

import boto3


def main():
    stream = sys.argv[1]
    client = boto3.client("kinesis")
    shards = [s["ShardId"] for s in client.list_shards(StreamName=stream)["Shards"]]
    lock = threading.Lock()
    seen = {"records": 0, "bytes": 0, "first": None, "last": None}

    def read(shard):
        client = boto3.client("kinesis")
        iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard,
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            out = client.get_records(ShardIterator=iterator, Limit=10000)
            now = time.time()
            with lock:
                if out["Records"]:
                    seen["first"] = seen["first"] or now
                    seen["last"] = now
                seen["records"] += len(out["Records"])
                seen["bytes"] += sum(len(r["Data"]) for r in out["Records"])
            if not out["Records"] and out.get("MillisBehindLatest", 0) == 0:
                break
            iterator = out.get("NextShardIterator")

    threads = [threading.Thread(target=read, args=(s,)) for s in shards]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"first": seen["first"], "last": seen["last"],
                      "kinesis_records": seen["records"], "bytes": seen["bytes"]}))


main()
