"""A record processor on amazon-kclpy's v3 API, run by `kinesis multilang` in its tests.

It appends one JSON line per record it is given to $OUT_DIR/records.jsonl (with the shard,
the record's position and $WORKER, the daemon it runs under) and checkpoints after each
batch, at shard end and when asked to shut down. Records whose data asks for it misbehave:

- "hold...": the batch is not checkpointed;
- "raise": process_records raises (amazon-kclpy prints the traceback and answers anyway);
- "garbage": a line that is not a message is printed on standard output;
- "exit" and "hang": the first time, the process exits (status 3) or hangs.
"""
import json
import os
import sys
import time

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor

OUT_DIR = os.environ["OUT_DIR"]


def first_time(what):
    marker = os.path.join(OUT_DIR, what + ".done")
    if os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True


class Recorder(processor.RecordProcessorBase):
    def initialize(self, initialize_input):
        self.shard = initialize_input.shard_id
        self.out = open(os.path.join(OUT_DIR, "records.jsonl"), "a")

    def process_records(self, process_records_input):
        hold = False
        for record in process_records_input.records:
            data = record.binary_data.decode()
            line = {"shard": self.shard, "data": data, "seq": record.sequence_number,
                    "sub": record.sub_sequence_number, "worker": os.environ.get("WORKER")}
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()
            hold = hold or data.startswith("hold")
            if data == "raise":
                raise ValueError("asked to raise by record " + record.sequence_number)
            if data == "garbage":
                print("this line is not a message")
                sys.stdout.flush()
            if data == "exit" and first_time("exit"):
                os._exit(3)
            if data == "hang" and first_time("hang"):
                time.sleep(3600)
        if not hold:
            process_records_input.checkpointer.checkpoint()

    def lease_lost(self, lease_lost_input):
        pass

    def shard_ended(self, shard_ended_input):
        shard_ended_input.checkpointer.checkpoint()

    def shutdown_requested(self, shutdown_requested_input):
        shutdown_requested_input.checkpointer.checkpoint()
        sys.stderr.write("shutdown requested: checkpointed " + self.shard + "\n")


if __name__ == "__main__":
    kcl.KCLProcess(Recorder()).run()
