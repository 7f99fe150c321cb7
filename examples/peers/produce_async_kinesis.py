"""async-kinesis 3.0.1 producer with KPL aggregation (aws-kinesis-agg), aggregates capped at
the KPL's 51,200 B. Its aggregator refuses partition keys: every aggregate goes under a
random key (no per-key order); its throttles are rescaled to the stream's shards."""

import asyncio
import os

from kinesis import Producer
from kinesis.aggregators import KPLAggregator
from kinesis.processors import Processor
from kinesis.serializers import StringSerializer

from common import args, records, report


class KplStrings(Processor, KPLAggregator, StringSerializer):
    def __init__(self):
        KPLAggregator.__init__(self, max_size=51_200)


async def main():
    stream, n, size, keys = args()
    async with Producer(
        stream,
        processor=KplStrings(),
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_KINESIS"),
        region_name=os.environ.get("AWS_REGION"),
        buffer_time=0.1,
    ) as producer:
        producer.set_put_rate_throttle()
        for _key, data in records(n, size, keys):
            await producer.put(data)
    report(sent=n, failed=0, kinesis_records=None, put_records_calls=None)


asyncio.run(main())
