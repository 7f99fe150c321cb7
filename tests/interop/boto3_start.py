"""boto3 configured by nothing but the environment `eval "$(localstack/start)"` leaves: no
region, endpoint or credentials in code or in ~/.aws. Used by tests/tests/start_script.rs.

    python boto3_start.py STREAM TABLE   -> one JSON line: the region boto3 picked and what it read back

Creates the stream and the table, puts one record and one item, and reads them back.
"""
import json
import sys

import boto3


def main(stream, table):
    session = boto3.session.Session()
    kinesis = session.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    put = kinesis.put_record(StreamName=stream, PartitionKey="key", Data=b"from boto3")
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=put["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = kinesis.get_records(ShardIterator=iterator)["Records"]

    dynamodb = session.client("dynamodb")
    dynamodb.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.get_waiter("table_exists").wait(
        TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    dynamodb.put_item(TableName=table, Item={"id": {"S": "1"}, "value": {"S": "from boto3"}})
    item = dynamodb.get_item(TableName=table, Key={"id": {"S": "1"}}, ConsistentRead=True)

    print(
        json.dumps(
            {
                "region": session.region_name,
                "kinesis_endpoint": kinesis.meta.endpoint_url,
                "dynamodb_endpoint": dynamodb.meta.endpoint_url,
                "records": [r["Data"].decode() for r in records],
                "item": item["Item"]["value"]["S"],
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
