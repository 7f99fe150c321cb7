// Runs one local emulator in the foreground, bound to 127.0.0.1:
//
//   node localstack/run.js kinesis  PORT [TLS_PORT]   kinesis-mock (npm kinesis-local), plain HTTP on PORT
//   node localstack/run.js dynamodb PORT [DATA_DIR]   dynalite, HTTP on PORT (in memory, or
//                                                     persisted in DATA_DIR across restarts)
//
// Used by localstack/start and by the kinesis-emulator crate, so both start the emulators
// the same way. Expects `npm ci` to have run in this folder.
'use strict';
const net = require('net');
const path = require('path');

// kinesis-mock binds 0.0.0.0 whatever it is told: force every listen() onto loopback.
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'object' && args[0] !== null) {
    args[0] = Object.assign({}, args[0], { host: '127.0.0.1' });
  } else if (typeof args[1] === 'string') {
    args[1] = '127.0.0.1';
  } else {
    args.splice(1, 0, '127.0.0.1');
  }
  // Proof that this process holds the port (the kinesis-emulator crate waits for it): a
  // port picked as free can be taken by another process before this one binds it, and
  // that process would answer the readiness probe.
  this.once('listening', () => {
    const address = this.address();
    if (address && typeof address === 'object') {
      console.log(`run.js: listening on 127.0.0.1:${address.port}`);
    }
  });
  return listen.apply(this, args);
};

// When started by a program (the kinesis-emulator crate), die with it: a test binary that
// exits without dropping its emulator must not leave servers behind.
const parent = Number(process.env.KINESIS_EMULATOR_PARENT_PID || 0);
if (parent > 0) {
  setInterval(() => {
    try {
      process.kill(parent, 0);
    } catch (e) {
      process.exit(0);
    }
  }, 500).unref();
}

const [service, port, third] = process.argv.slice(2);
if (!/^\d+$/.test(port || '')) {
  console.error('usage: node run.js kinesis PORT [TLS_PORT] | dynamodb PORT [DATA_DIR]');
  process.exit(2);
}
const modules = path.join(__dirname, 'node_modules');

if (service === 'kinesis') {
  const pkg = path.join(modules, 'kinesis-local');
  const defaults = {
    // Resharding and stream creation take 500 ms by default; tests want them quick.
    CREATE_STREAM_DURATION: '100ms',
    DELETE_STREAM_DURATION: '100ms',
    SPLIT_SHARD_DURATION: '100ms',
    MERGE_SHARDS_DURATION: '100ms',
    UPDATE_SHARD_COUNT_DURATION: '100ms',
    REGISTER_STREAM_CONSUMER_DURATION: '100ms',
    DEREGISTER_STREAM_CONSUMER_DURATION: '100ms',
    SHARD_LIMIT: '1000',
    LOG_LEVEL: 'WARN',
    AWS_REGION: 'us-east-1',
  };
  for (const [k, v] of Object.entries(defaults)) {
    if (!process.env[k]) process.env[k] = v;
  }
  process.env.KINESIS_MOCK_PLAIN_PORT = port;
  process.env.KINESIS_MOCK_TLS_PORT = third || String(Number(port) + 1);
  process.env.KINESIS_MOCK_CERT_PATH = path.join(pkg, 'server.json');
  process.chdir(pkg);
  require(path.join(pkg, 'main.js'));
} else if (service === 'dynamodb') {
  const dynalite = require(path.join(modules, 'dynalite'));
  const options = { createTableMs: 50, deleteTableMs: 50, updateTableMs: 50 };
  if (third) options.path = third; // LevelDB folder: tables and items survive a restart
  const server = dynalite(options);
  server.listen(Number(port), '127.0.0.1', () => {
    console.log(`dynalite listening on http://127.0.0.1:${port}`);
  });
} else {
  console.error(`unknown service ${JSON.stringify(service)}: expected kinesis or dynamodb`);
  process.exit(2);
}
