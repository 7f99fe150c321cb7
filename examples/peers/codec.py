"""AWS's aws-kinesis-agg (Python) on the work of `kpl/aggregation/examples/codec.rs`: user
records of 100 B, 1 KiB and 50 KiB over 1,000 keys, aggregated with the same size limit
and deaggregated again, on one core. One JSON line per row."""

import json
import time

from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import iter_deaggregate_records


def aggregate_limit(size):
    return 51_200 if size < 20_000 else 1024 * 1024 - 256


def timed(minimum, work):
    started = time.perf_counter()
    rounds = 0
    while time.perf_counter() - started < minimum:
        work()
        rounds += 1
    return rounds, time.perf_counter() - started


def row(op, size, records, seconds):
    print(json.dumps({"op": op, "size": size, "records_per_s": round(records / seconds),
                      "mb_per_s": round(records * size / seconds / 1e6, 1)}), flush=True)


def main():
    keys = [f"key-{k}" for k in range(1000)]
    for size in (100, 1024, 50 * 1024):
        limit = aggregate_limit(size)
        # 1 MiB of user data per round (Python is slower: keep rounds short).
        count = max(16, 1024 * 1024 // size)
        records = [(keys[i % len(keys)], b"x" * size) for i in range(count)]
        out = []

        def aggregate():
            out.clear()
            aggregator = RecordAggregator(max_size=limit)
            for key, data in records:
                full = aggregator.add_user_record(key, data)
                if full is not None:
                    out.append(full.get_contents()[2])
            last = aggregator.clear_and_get()
            if last is not None:
                out.append(last.get_contents()[2])

        rounds, seconds = timed(2.0, aggregate)
        row("aggregate", size, count * rounds, seconds)
        shaped = [{"Data": data, "PartitionKey": "a", "SequenceNumber": "1",
                   "ApproximateArrivalTimestamp": 0} for data in out]

        def deaggregate():
            users = sum(1 for _ in iter_deaggregate_records(shaped, data_format="Boto3"))
            assert users == count, (users, count)

        rounds, seconds = timed(2.0, deaggregate)
        row("deaggregate", size, count * rounds, seconds)


if __name__ == "__main__":
    main()
