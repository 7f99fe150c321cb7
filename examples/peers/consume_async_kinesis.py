"""async-kinesis 3.0.1 consumer from TRIM_HORIZON with its DynamoDB checkpointer (its table
created by the harness before timing), or its in-memory one with `--memory`. Records with
the KPL magic are deaggregated, others read as they are. Reports the wall-clock times of the
first and the last delivery and the distinct ids seen."""

import asyncio
import json
import os
import sys
import time

import aws_kinesis_agg
from kinesis import Consumer
from kinesis.aggregators import KPLAggregator
from kinesis.checkpointers import MemoryCheckPointer
from kinesis.processors import Processor
from kinesis.serializers import StringSerializer

from common import report


class Mixed(Processor, KPLAggregator, StringSerializer):
    def __init__(self):
        KPLAggregator.__init__(self, max_size=51_200)

    def parse(self, data):
        if data[: len(aws_kinesis_agg.MAGIC)] == aws_kinesis_agg.MAGIC:
            yield from KPLAggregator.parse(self, data)
        else:
            yield self.deserialize(data)


async def main():
    stream, expected, app = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if "--memory" in sys.argv:
        checkpointer = MemoryCheckPointer(name=app)
    else:
        from kinesis.dynamodb import DynamoDBCheckPointer

        checkpointer = DynamoDBCheckPointer(
            name=app,
            create_table=False,
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_DYNAMODB"),
            region_name=os.environ.get("AWS_REGION"),
        )
    ids, first, last = set(), None, None
    async with Consumer(
        stream,
        checkpointer=checkpointer,
        processor=Mixed(),
        iterator_type="TRIM_HORIZON",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_KINESIS"),
        region_name=os.environ.get("AWS_REGION"),
        idle_timeout=5.0,
        sleep_time_no_records=0.2,
    ) as consumer:
        while len(ids) < expected:
            async for item in consumer:
                now = time.time()
                first = first or now
                ids.add(json.loads(item)["id"])
                last = now
                if len(ids) >= expected:
                    break
    report(first=first, last=last, distinct=len(ids))


asyncio.run(main())
