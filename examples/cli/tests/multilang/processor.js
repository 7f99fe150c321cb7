// A record processor on AWS's aws-kcl for Node.js, run by `kinesis multilang` in its tests:
// one JSON line per record in $OUT_DIR/records.jsonl, a checkpoint after each batch, at
// shard end and when asked to shut down.
'use strict';

const fs = require('fs');
const path = require('path');
const kcl = require('aws-kcl');

const out = path.join(process.env.OUT_DIR, 'records.jsonl');
let shard;

function checkpointed(what, done) {
  return function (error) {
    if (error) {
      process.stderr.write(what + ': checkpoint failed: ' + error + '\n');
    }
    done();
  };
}

kcl({
  initialize: function (input, done) {
    shard = input.shardId;
    done();
  },
  processRecords: function (input, done) {
    for (const record of input.records) {
      const line = {
        shard: shard,
        data: Buffer.from(record.data, 'base64').toString(),
        seq: record.sequenceNumber,
        sub: record.subSequenceNumber,
        worker: process.env.WORKER,
      };
      fs.appendFileSync(out, JSON.stringify(line) + '\n');
    }
    input.checkpointer.checkpoint(checkpointed('processRecords', done));
  },
  leaseLost: function (input, done) {
    done();
  },
  shardEnded: function (input, done) {
    input.checkpointer.checkpoint(checkpointed('shardEnded', done));
  },
  shutdownRequested: function (input, done) {
    input.checkpointer.checkpoint(function (error) {
      process.stderr.write('shutdown requested: checkpointed ' + shard + (error ? ' failed: ' + error : '') + '\n');
      done();
    });
  },
}).run();
