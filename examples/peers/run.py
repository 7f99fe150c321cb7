#!/usr/bin/env python3
"""Our producer, consumer and codec side by side with what users would pick instead, in one
run on one machine, against the local emulators; prints tables and writes them as JSON.

    python3 examples/peers/run.py            # the full table (100k and 1M records)
    python3 examples/peers/run.py --quick    # small counts, to check the harness

On first use it builds our programs in release, creates one virtualenv per peer under
target/peers/ (pinned versions from PyPI) and installs the emulators (localstack/start).
Every run gets freshly started emulators and a fresh 4-shard stream; every record of every
producer run is read back (GetRecords through `kinesis consume --shard`) and counted by
distinct id, or the row is marked invalid. Not part of CI.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = ROOT / "target" / "peers"
KINESIS = ROOT / "target" / "release" / "kinesis"
CODEC = ROOT / "target" / "release" / "examples" / "codec"
PORTS = ["--kinesis-port", "4667", "--dynamodb-port", "8100"]

VENVS = {
    "aiokpl": ["aiokpl==0.2.0", "boto3"],
    # Not with boto3 on the same line: pip backtracks for many minutes (peers.md).
    "async-kinesis": ["async-kinesis[kpl,dynamodb]==3.0.1"],
    "agg": ["aws-kinesis-agg==1.2.3", "boto3"],
}

PRODUCERS = [
    # (name, virtualenv or None for ours, script)
    ("kinesis produce (ours)", None, None),
    ("aiokpl 0.2.0", "aiokpl", "produce_aiokpl.py"),
    ("async-kinesis 3.0.1 (KPL aggregation)", "async-kinesis", "produce_async_kinesis.py"),
    ("aws-kinesis-agg 1.2.3 + boto3", "agg", "produce_agg_boto3.py"),
    ("boto3 PutRecords loop", "agg", "produce_boto3.py"),
]


def log(message):
    print(f"peers: {message}", file=sys.stderr, flush=True)


def venv_python(name):
    """The virtualenv's python, created and installed on first use."""
    venv = WORK / f"venv-{name}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = " ".join(VENVS[name])
    if not stamp.exists() or stamp.read_text() != wanted:
        log(f"installing {wanted} into {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *VENVS[name]], check=True)
        stamp.write_text(wanted)
    return str(python)


def versions():
    out = {"python": platform.python_version()}
    for name in VENVS:
        frozen = subprocess.run(
            [venv_python(name), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
        ).stdout
        out[name] = [line for line in frozen.splitlines() if line.split("==")[0].lower() in (
            "aiokpl", "async-kinesis", "aws-kinesis-agg", "boto3", "aiobotocore", "protobuf")]
    return out


def machine():
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "memory_gib": round(int(mem) / 1024 / 1024, 1), "cpu": cpu,
            "load_average": os.getloadavg()}


class Emulators:
    """localstack/start on ports of our own; a fresh pair per run."""

    def __init__(self):
        self.env = None

    def start(self):
        self.stop()
        out = subprocess.run([str(ROOT / "localstack" / "start"), *PORTS], capture_output=True,
                             text=True, check=True).stdout
        env = dict(os.environ)
        for line in out.splitlines():
            if line.startswith("export "):
                key, value = line[len("export "):].split("=", 1)
                env[key] = value.strip("'\"")
        self.env = env
        return env

    def stop(self):
        if self.env is not None:
            subprocess.run([str(ROOT / "localstack" / "stop")], env=self.env, capture_output=True)
            self.env = None


def run_measured(command, env, timeout, stdout_lines=None):
    """Runs `command`; returns wall seconds, CPU seconds (user + sys) and peak RSS (MiB) of
    the process and its children, and its standard output. With `stdout_lines`, each line
    is handed to it with its arrival time as it comes."""
    started = time.time()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=HERE)
    lines = []
    deadline = started + timeout
    if stdout_lines is not None:
        for line in process.stdout:
            stdout_lines(line, time.time())
            if time.time() > deadline:
                process.kill()
                break
    else:
        try:
            out, _ = process.communicate(timeout=timeout)
            lines = out.splitlines()
        except subprocess.TimeoutExpired:
            process.kill()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.time() - started
    stderr = process.stderr.read() if process.stderr else ""
    return {
        "started": started,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "exit": os.waitstatus_to_exitcode(status),
        "stdout": lines,
        "stderr_tail": stderr[-600:],
    }


def kinesis(env, *args, timeout=600):
    out = subprocess.run([str(KINESIS), *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"kinesis {' '.join(args)}: {out.stderr[-800:]}")
    return out.stdout


def create_stream(env, stream):
    described = json.loads(kinesis(env, "streams", "create", "--stream", stream, "--shards", "4"))
    return [s["shard_id"] for s in described["shards"]]


def read_back(env, stream, shards):
    """Distinct ids and Kinesis records (distinct sequence numbers) in the stream."""
    ids, sequences, user_records = set(), set(), 0
    for shard in shards:
        out = kinesis(env, "consume", "--stream", stream, "--shard", shard,
                      "--idle-between-reads", "0", "--exit-after-idle", "2s", timeout=1800)
        for line in out.splitlines():
            record = json.loads(line)
            user_records += 1
            sequences.add(record["sequence_number"])
            ids.add(json.loads(record["data"])["id"])
    return ids, len(sequences), user_records


def producer_row(emulators, name, venv, script, n, size):
    env = emulators.start()
    stream = f"peers-{int(time.time() * 1000)}"
    shards = create_stream(env, stream)
    if venv is None:
        command = [str(KINESIS), "produce", "--stream", stream, "--records", str(n),
                   "--size", str(size), "--keys", "1000"]
    else:
        command = [venv_python(venv), str(HERE / script), stream, str(n), str(size), "1000"]
    log(f"{name}: {n} x {size} B")
    run = run_measured(command, env, timeout=3600)
    summary = {}
    for line in reversed(run["stdout"]):
        try:
            summary = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    ids, kinesis_records, user_records = read_back(env, stream, shards)
    emulators.stop()
    valid = run["exit"] == 0 and len(ids) == n
    return {
        "peer": name, "records": n, "size": size, "valid": valid,
        "wall_s": run["wall_s"], "records_per_s": round(n / run["wall_s"]) if run["wall_s"] else None,
        "cpu_s": run["cpu_s"], "cpu_us_per_record": round(run["cpu_s"] / n * 1e6, 1),
        "peak_rss_mib": run["peak_rss_mib"],
        "kinesis_records_in_stream": kinesis_records,
        "user_records_in_stream": user_records,
        "distinct_ids_in_stream": len(ids),
        "put_records_calls": summary.get("put_records_calls"),
        "failed": summary.get("failed"),
        "exit": run["exit"],
        **({} if valid else {"stderr_tail": run["stderr_tail"]}),
    }


def ceiling(emulators, size):
    """The emulator's own ceiling: prebuilt 500-record PutRecords calls of `size`-byte
    records, sent from 8 threads for 10 seconds by a client doing nothing else."""
    env = emulators.start()
    stream = f"ceiling-{int(time.time() * 1000)}"
    create_stream(env, stream)
    script = HERE / "ceiling.py"
    run = run_measured([venv_python("agg"), str(script), stream, str(size)], env, timeout=600)
    emulators.stop()
    return json.loads(run["stdout"][-1]) if run["stdout"] else {"error": run["stderr_tail"]}


def consumer_rows(emulators, n, quick):
    rows = []
    for aggregated in (True, False):
        for peer in ("kinesis consume (ours)", "async-kinesis 3.0.1 (DynamoDB checkpointer)"):
            env = emulators.start()
            stream = f"peers-c-{int(time.time() * 1000)}"
            create_stream(env, stream)
            produce = [str(KINESIS), "produce", "--stream", stream, "--records", str(n),
                       "--size", "100", "--keys", "1000"]
            if not aggregated:
                produce.append("--no-aggregation")
            subprocess.run(produce, env=env, capture_output=True, check=True)
            app = f"peers-app-{int(time.time() * 1000)}"
            log(f"{peer}: {n} records, {'aggregated' if aggregated else 'not aggregated'}")
            if peer.startswith("kinesis"):
                seen, times = set(), []

                def line(text, at):
                    record = json.loads(text)
                    seen.add(json.loads(record["data"])["id"])
                    if not times:
                        times.append(at)
                    if len(seen) == n and len(times) == 1:
                        times.append(at)

                run = run_measured(
                    [str(KINESIS), "consume", "--stream", stream, "--app", app,
                     "--exit-after-idle", "3s"],
                    env, timeout=900, stdout_lines=line)
                first = times[0] if times else None
                last = times[1] if len(times) > 1 else None
                distinct = len(seen)
            else:
                table = f"kinesis-checkpoints-{app}"
                subprocess.run(
                    [venv_python("agg"), "-c",
                     "import boto3,sys; boto3.client('dynamodb').create_table(TableName=sys.argv[1],"
                     "KeySchema=[{'AttributeName':'shard_id','KeyType':'HASH'}],"
                     "AttributeDefinitions=[{'AttributeName':'shard_id','AttributeType':'S'}],"
                     "BillingMode='PAY_PER_REQUEST')", table],
                    env=env, check=True, capture_output=True)
                run = run_measured(
                    [venv_python("async-kinesis"), str(HERE / "consume_async_kinesis.py"), stream,
                     str(n), app], env, timeout=900)
                report = {}
                if run["stdout"]:
                    report = json.loads(run["stdout"][-1])
                first, last, distinct = report.get("first"), report.get("last"), report.get("distinct", 0)
            emulators.stop()
            rows.append({
                "peer": peer, "records": n, "aggregated": aggregated, "valid": distinct == n,
                "first_delivery_s": round(first - run["started"], 2) if first else None,
                "all_delivered_s": round(last - run["started"], 2) if last else None,
                "records_per_s_after_first": round((n - 1) / (last - first)) if first and last and last > first else None,
                "cpu_s": run["cpu_s"], "cpu_us_per_record": round(run["cpu_s"] / n * 1e6, 1),
                "peak_rss_mib": run["peak_rss_mib"], "distinct": distinct,
                **({} if distinct == n else {"stderr_tail": run["stderr_tail"]}),
            })
    return rows


def codec_rows():
    ours = [json.loads(l) for l in subprocess.run([str(CODEC)], capture_output=True, text=True,
                                                  check=True).stdout.splitlines()]
    python = [json.loads(l) for l in subprocess.run(
        [venv_python("agg"), str(HERE / "codec.py")], capture_output=True, text=True,
        check=True).stdout.splitlines()]
    md5 = next(r["mb_per_s"] for r in ours if r["op"] == "md5")
    rows = []
    for r in ours:
        if r["op"] == "md5":
            continue
        peer = next(p for p in python if p["op"] == r["op"] and p["size"] == r["size"])
        rows.append({"op": r["op"], "size": r["size"],
                     "ours_records_per_s": r["records_per_s"], "ours_mb_per_s": r["mb_per_s"],
                     "aws_kinesis_agg_records_per_s": peer["records_per_s"],
                     "aws_kinesis_agg_mb_per_s": peer["mb_per_s"],
                     "speedup": round(r["records_per_s"] / peer["records_per_s"], 1),
                     "share_of_md5": round(r["mb_per_s"] / md5, 2)})
    return rows, md5


def table(rows, columns):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    for r in rows:
        lines.append(" | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, to check the harness")
    parser.add_argument("--no-1m", action="store_true", help="skip the 1,000,000-record runs")
    parser.add_argument("--only", choices=["producer", "consumer", "codec"], action="append")
    parser.add_argument("--out", default=str(WORK / "results.json"))
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    log("building our programs (release)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kinesis-cli"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kinesis-aggregation", "--example",
                    "codec"], cwd=ROOT, check=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
               "versions": versions()}
    only = set(args.only or ["producer", "consumer", "codec"])
    emulators = Emulators()
    try:
        if "codec" in only:
            rows, md5 = codec_rows()
            results["codec"] = rows
            results["md5_mb_per_s"] = md5
            print(f"\nCodec, one core (MD5 of this machine: {md5} MB/s)\n")
            print(table(rows, ["op", "size", "ours_records_per_s", "ours_mb_per_s",
                               "aws_kinesis_agg_records_per_s", "speedup", "share_of_md5"]))
        if "producer" in only:
            results["ceiling"] = {str(size): ceiling(emulators, size) for size in (100, 1024)}
            print(f"\nEmulator ceiling (boto3, prebuilt 500-record PutRecords calls): {results['ceiling']}")
            counts = [2_000] if args.quick else ([100_000] if args.no_1m else [100_000, 1_000_000])
            rows = []
            for n in counts:
                for size in (100, 1024):
                    for name, venv, script in PRODUCERS:
                        # kinesis-mock slows as shards fill: the plain loop gets a tenth.
                        count = n if "loop" not in name else max(n // 10, 1_000)
                        rows.append(producer_row(emulators, name, venv, script, count, size))
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            results["producer"] = rows
            print("\nProducer\n")
            print(table(rows, ["peer", "records", "size", "valid", "wall_s", "records_per_s",
                               "cpu_s", "cpu_us_per_record", "peak_rss_mib",
                               "kinesis_records_in_stream", "put_records_calls", "failed"]))
        if "consumer" in only:
            rows = consumer_rows(emulators, 2_000 if args.quick else 200_000, args.quick)
            results["consumer"] = rows
            print("\nConsumer\n")
            print(table(rows, ["peer", "records", "aggregated", "valid", "first_delivery_s",
                               "all_delivered_s", "records_per_s_after_first", "cpu_s",
                               "cpu_us_per_record", "peak_rss_mib"]))
    finally:
        emulators.stop()
        Path(args.out).write_text(json.dumps(results, indent=2))
        log(f"results in {args.out}")


if __name__ == "__main__":
    main()
