"""Shared by the peer scripts: the records every peer sends, and its JSON report."""

import json
import sys


def payload(i, key, size):
    """The record every peer sends: `{"id": i, "key": key, "pad": "..."}`, padded with dots
    to `size` bytes (as `kinesis produce --records` makes them)."""
    bare = f'{{"id":{i},"key":"{key}","pad":""}}'
    return bare[:-2] + "." * max(0, size - len(bare)) + '"}'


def records(n, size, keys):
    for i in range(n):
        key = f"key-{i % keys}"
        yield key, payload(i, key, size)


def report(**fields):
    print(json.dumps(fields), flush=True)


def args():
    """STREAM N SIZE KEYS from the command line."""
    stream, n, size, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    return stream, n, size, keys
