"""aiokpl 0.2.0 (pure-Python async KPL-equivalent) with its KPL defaults."""

import asyncio
import os

from aiokpl import Config, Producer

from common import args, records, report


async def main():
    stream, n, size, keys = args()
    failed = 0
    async with Producer(Config(region=os.environ.get("AWS_REGION", "us-east-1"))) as producer:
        outcomes = []
        for key, data in records(n, size, keys):
            outcomes.append(await producer.put_record(stream=stream, partition_key=key, data=data.encode()))
        for outcome in outcomes:
            result = await outcome.wait()
            if not result.success:
                failed += 1
    report(sent=n, failed=failed, kinesis_records=None, put_records_calls=None)


asyncio.run(main())
