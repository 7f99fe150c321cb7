#!/usr/bin/env python3
"""Our producer, consumer and codec side by side with what users would pick instead, in one
run on one machine, against the local emulators; prints tables and writes them as JSON.

    python3 examples/peers/run.py            # the full table (100k and 1M records)
    python3 examples/peers/run.py --quick    # small counts, to check the harness
    python3 examples/peers/run.py --ours-before DIR   # also rows for an older build of ours
    python3 examples/peers/run.py --chart-only results.json --charts DIR   # redraw the charts

On first use it builds our programs in release, creates one virtualenv per peer under
target/peers/ (pinned versions from PyPI) and installs the emulators (localstack/start).
Every run gets freshly started emulators and a fresh 4-shard stream; every record of every
producer run is read back (GetRecords through `kinesis consume --shard`) and counted by
distinct id, or the row is marked invalid. At the end it draws one SVG bar chart per table
(charts.py, matplotlib in a virtualenv of its own). Not part of CI.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = ROOT / "target" / "peers"
KINESIS = ROOT / "target" / "release" / "kinesis"
CODEC = ROOT / "target" / "release" / "examples" / "codec"
# Not a peer: the work ours cannot do without and nothing else (examples/examples/floor.rs).
FLOOR = ROOT / "target" / "release" / "examples" / "floor"
# Not the emulators' default ports (4567, 8000): other jobs on the machine may use those.
PORTS = ["--kinesis-port", os.environ.get("PEERS_KINESIS_PORT", "4667"),
         "--dynamodb-port", os.environ.get("PEERS_DYNAMODB_PORT", "8100")]

VENVS = {
    # The versions pip chose for the 2026-12-02 run, pinned: unpinned, pip backtracks through
    # boto3 releases for many minutes, and the rows would change with each new release.
    "aiokpl": ["aiokpl==0.2.0", "aiobotocore==3.10.0", "boto3==1.43.117"],
    # Not with boto3 on the same line: pip backtracks for many minutes (peers.md).
    "async-kinesis": ["async-kinesis[kpl,dynamodb]==3.0.1", "aiobotocore==2.25.1"],
    "agg": ["aws-kinesis-agg==1.2.3", "boto3==1.44.8", "protobuf==7.36.2"],
    # Not a peer: draws the charts (charts.py).
    "charts": ["matplotlib==3.11.2"],
}

PRODUCERS = [
    # (name, virtualenv or None for ours, script or our extra arguments). With --ours-before,
    # each of our rows gets a twin "(ours-before, ...)" run with the older binary.
    ("kinesis produce (ours)", None, None),
    # kinesis-mock takes in about 2.4 MB/s (the ceiling below): 100 MB takes longer than the
    # KPL's 30 s record TTL, and a 5 MiB PutRecords on a filling stream longer than its 6 s
    # request timeout. The same with both raised.
    ("kinesis produce (ours, --record-ttl 300s --request-timeout 60s)", None,
     ["--record-ttl", "300s", "--request-timeout", "60s"]),
    # Not a producer: the required work only, with the same SDK and data (a lower bound).
    ("floor: required work only (examples/floor.rs)", "floor", None),
    ("aiokpl 0.2.0", "aiokpl", "produce_aiokpl.py"),
    ("async-kinesis 3.0.1 (KPL aggregation)", "async-kinesis", "produce_async_kinesis.py"),
    ("aws-kinesis-agg 1.2.3 + boto3", "agg", "produce_agg_boto3.py"),
    ("boto3 PutRecords loop", "agg", "produce_boto3.py"),
]


CONSUMERS = [
    # (name, our extra arguments; None for a peer). With --ours-before, each of our rows
    # gets a twin "(ours-before, ...)" run with the older binary.
    ("kinesis consume (ours)", []),
    # async-kinesis below polls every 0.2 s when a shard is idle (its default: 2 s); ours
    # waits the Java KCL's 1.5 s after every GetRecords: the same with 200 ms.
    ("kinesis consume (ours, --idle-between-reads 200ms)", ["--idle-between-reads", "200ms"]),
    # async-kinesis's script below stops once it has every record; ours, told the count,
    # does the same (a graceful stop: checkpoints, leases released), without the 3 s of
    # idle reads before --exit-after-idle ends it.
    ("kinesis consume (ours, --count N)", ["--count", "{n}"]),
    ("async-kinesis 3.0.1 (DynamoDB checkpointer)", None),
    # Not a consumer: reads, checks, unpacks and writes the same lines as ours, without a
    # lease table or checkpoints (a lower bound).
    ("floor: required work only, no DynamoDB (examples/floor.rs)", None),
    # Not a consumer: how fast the emulator hands the same stream out (see read_ceiling.py).
    ("boto3 GetRecords, no processing (the emulator's read ceiling)", None),
]


def with_before(rows, before):
    """`rows` with, after each of ours, its twin run by the `before` binary (or unchanged
    without one). Each row gains its binary: ours, the older one, or None for a peer."""
    out = []
    for row in rows:
        ours = "(ours" in row[0]
        out.append((*row, KINESIS if ours else None))
        if ours and before:
            out.append((row[0].replace("(ours", "(ours-before", 1), *row[1:], before))
    return out


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
            "aiokpl", "async-kinesis", "aws-kinesis-agg", "boto3", "aiobotocore", "protobuf",
            "matplotlib")]
    return out


def machine():
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "memory_gib": round(int(mem) / 1024 / 1024, 1), "cpu": cpu,
            "load_average": os.getloadavg()}


class LoadSampler:
    """The 1-minute load average every 30 s while the harness runs (the machine is shared:
    the tables are only comparable with the load they were taken under)."""

    def __init__(self, every=30):
        import threading
        self.samples, self.stop_event = [], threading.Event()
        self.thread = threading.Thread(target=self.run, args=(every,), daemon=True)
        self.thread.start()

    def run(self, every):
        while True:
            self.samples.append(round(os.getloadavg()[0], 2))
            if self.stop_event.wait(every):
                return

    def summary(self):
        self.stop_event.set()
        s = sorted(self.samples)
        return {"samples": len(s), "min": s[0], "median": s[len(s) // 2], "max": s[-1]} if s else {}


class Emulators:
    """localstack/start on ports of our own; a fresh pair per run."""

    def __init__(self):
        self.env = None

    def start(self):
        self.stop()
        # kinesis-mock runs on Node: its default heap limit (about 2 GB) ran out while a
        # 100 MB stream was read back under load (2026-12-05).
        env = dict(os.environ, NODE_OPTIONS="--max-old-space-size=6144")
        out = subprocess.run([str(ROOT / "localstack" / "start"), *PORTS], capture_output=True,
                             text=True, check=True, env=env).stdout
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
    the process and its children, and its standard output. With `stdout_lines`, each line is
    handed to it with its arrival time as it comes.

    CPU and peak RSS come from GNU time when it is installed: a child forked straight from
    this harness would report the harness's own resident size as its peak (Linux records the
    forked copy's high-water mark at exec), and the harness holds read-back data."""
    import tempfile
    import threading

    gnu_time = "/usr/bin/time" if Path("/usr/bin/time").exists() else None
    with tempfile.TemporaryFile(mode="w+") as stderr, \
            tempfile.NamedTemporaryFile(mode="r", suffix=".time") as timing:
        if gnu_time:
            command = [gnu_time, "-f", "%U %S %M", "-o", timing.name, *command]
        started = time.time()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                   text=True, cwd=HERE)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        lines = []
        for line in process.stdout:
            if stdout_lines is not None:
                stdout_lines(line, time.time())
            else:
                lines.append(line.rstrip("\n"))
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        timer.cancel()
        wall = time.time() - started
        stderr.seek(0)
        tail = stderr.read()[-600:]
        cpu, peak_kib = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
        measured = timing.read().split() if gnu_time else []
        if len(measured) >= 3:
            cpu, peak_kib = float(measured[-3]) + float(measured[-2]), int(measured[-1])
    return {
        "started": started,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "exit": process.returncode,
        "stdout": lines,
        "stderr_tail": tail,
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


def producer_row(emulators, name, venv, script, binary, n, size):
    env = emulators.start()
    stream = f"peers-{int(time.time() * 1000)}"
    shards = create_stream(env, stream)
    if venv == "floor":
        command = [str(FLOOR), "produce", stream, str(n), str(size), "1000"]
    elif venv is None:
        command = [str(binary), "produce", "--stream", stream, "--records", str(n),
                   "--size", str(size), "--keys", "1000", *(script or [])]
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


def ceiling(emulators, size, count):
    """The emulator's own ceiling: prebuilt PutRecords calls of `count` records of `size`
    bytes into a fresh 4-shard stream, sent from 8 threads for 10 seconds by a client doing
    nothing else (kinesis-mock's cost per put grows with what the shard holds)."""
    env = emulators.start()
    stream = f"ceiling-{int(time.time() * 1000)}"
    create_stream(env, stream)
    script = HERE / "ceiling.py"
    run = run_measured([venv_python("agg"), str(script), stream, str(size), str(count)], env,
                       timeout=600)
    emulators.stop()
    return json.loads(run["stdout"][-1]) if run["stdout"] else {"error": run["stderr_tail"]}


def consumer_rows(emulators, aggregated_n, peer_filter, before=None):
    rows = []
    for aggregated in (True, False):
        # Unaggregated, every user record is a Kinesis record, and kinesis-mock's cost per
        # put grows with what the shard holds: 200,000 of them cannot be written to it in
        # reasonable time (puts time out), so that row reads 20,000.
        n = aggregated_n if aggregated else min(aggregated_n, 20_000)
        for peer, extra, binary in with_before(CONSUMERS, before):
            if peer_filter and not any(p in peer for p in peer_filter):
                continue
            env = emulators.start()
            stream = f"peers-c-{int(time.time() * 1000)}"
            create_stream(env, stream)
            produce = [str(KINESIS), "produce", "--stream", stream, "--records", str(n),
                       "--size", "100", "--keys", "1000", "--request-timeout", "60s"]
            if not aggregated:
                produce.append("--no-aggregation")
            subprocess.run(produce, env=env, capture_output=True, check=True)
            app = f"peers-app-{int(time.time() * 1000)}"
            log(f"{peer}: {n} records, {'aggregated' if aggregated else 'not aggregated'}")
            if peer.startswith("kinesis"):
                # Lines are only counted as they arrive (parsing them here would make this
                # reader the bottleneck); ids are checked once the process has ended.
                lines, times = [], []

                def line(text, at):
                    lines.append(text)
                    if not times:
                        times.append(at)
                    if len(lines) == n:
                        times.append(at)

                run = run_measured(
                    [str(binary), "consume", "--stream", stream, "--app", app,
                     "--exit-after-idle", "3s", *(arg.format(n=n) for arg in extra)],
                    env, timeout=900, stdout_lines=line)
                seen = {json.loads(json.loads(l)["data"])["id"] for l in lines}
                first = times[0] if times else None
                last = times[1] if len(times) > 1 and len(seen) == n else None
                distinct = len(seen)
            elif peer.startswith("floor"):
                output = WORK / "floor.jsonl"
                run = run_measured([str(FLOOR), "consume", stream, str(output)], env, timeout=900)
                seen = {json.loads(json.loads(l)["data"])["id"] for l in output.open()}
                first, last, distinct = None, None, len(seen)
            elif peer.startswith("boto3"):
                run = run_measured([venv_python("agg"), str(HERE / "read_ceiling.py"), stream],
                                   env, timeout=900)
                report = json.loads(run["stdout"][-1]) if run["stdout"] else {}
                # Kinesis records only: deaggregating is a consumer's work, not the emulator's.
                first, last = report.get("first"), report.get("last")
                distinct = n if last else 0
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
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
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


def our_binary(path):
    """--ours-before: a directory holding a release `kinesis` (or a tree whose
    target/release holds one), or the binary itself."""
    path = Path(path).resolve()
    for candidate in (path, path / "kinesis", path / "target" / "release" / "kinesis"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    sys.exit(f"peers: no kinesis binary in {path}")


def commit_of(path):
    """The commit of the git tree holding `path`, if any (for the JSON and the charts)."""
    out = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


def draw_charts(results_json, out_dir):
    """One SVG bar chart per table of `results_json`, into `out_dir` (charts.py)."""
    out = subprocess.run([venv_python("charts"), str(HERE / "charts.py"), str(results_json),
                          str(out_dir)], capture_output=True, text=True)
    if out.returncode != 0:
        log(f"charts failed: {out.stderr[-800:]}")
    for line in out.stdout.splitlines():
        log(f"chart {line}")


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
    parser.add_argument("--size", type=int, action="append",
                        help="only producer rows of this record size, 100 or 1024 (repeatable)")
    parser.add_argument("--peer", action="append",
                        help="only producer and consumer rows whose name contains this (repeatable)")
    parser.add_argument("--out", default=str(WORK / "results.json"))
    parser.add_argument("--ours-before", metavar="DIR",
                        help="also run the producer and consumer rows of ours with the release "
                             "`kinesis` in DIR (an older build), beside the current one")
    parser.add_argument("--charts", metavar="DIR",
                        help="where to write the SVG charts (default: beside --out)")
    parser.add_argument("--no-build", action="store_true",
                        help="use target/release as it is (a second harness beside a first)")
    parser.add_argument("--chart-only", metavar="RESULTS_JSON",
                        help="only redraw the charts of an existing results JSON, run nothing")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.chart_only:
        draw_charts(Path(args.chart_only).resolve(),
                    Path(args.charts or Path(args.chart_only).resolve().parent).resolve())
        return
    before = our_binary(args.ours_before) if args.ours_before else None
    if not args.no_build:
        log("building our programs (release)")
        subprocess.run(["nice", "cargo", "build", "--release", "-q", "-p", "kinesis-cli"],
                       cwd=ROOT, check=True)
        subprocess.run(["nice", "cargo", "build", "--release", "-q", "-p", "kinesis-aggregation",
                        "--example", "codec"], cwd=ROOT, check=True)
        subprocess.run(["nice", "cargo", "build", "--release", "-q", "-p", "examples",
                        "--example", "floor"], cwd=ROOT, check=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
               "versions": versions(), "command": " ".join(sys.argv),
               "ours": {"binary": str(KINESIS), "commit": commit_of(ROOT)}}
    if before:
        results["ours_before"] = {"binary": str(before), "commit": commit_of(before.parent)}
    only = set(args.only or ["producer", "consumer", "codec"])
    emulators = Emulators()
    load = LoadSampler()
    try:
        if "codec" in only:
            rows, md5 = codec_rows()
            results["codec"] = rows
            results["md5_mb_per_s"] = md5
            print(f"\nCodec, one core (MD5 of this machine: {md5} MB/s)\n")
            print(table(rows, ["op", "size", "ours_records_per_s", "ours_mb_per_s",
                               "aws_kinesis_agg_records_per_s", "speedup", "share_of_md5"]))
        if "producer" in only and not args.peer:
            results["ceiling"] = [ceiling(emulators, size, count)
                                  for size, count in ((100, 500), (1024, 500), (51_200, 100))]
            print("\nEmulator ceiling (boto3, 8 threads, prebuilt PutRecords calls, 10 s)\n")
            print(table(results["ceiling"], ["size", "records_per_call", "records_per_s",
                                             "mb_per_s", "calls_per_s", "failed"]))
        if "producer" in only:
            counts = [2_000] if args.quick else ([100_000] if args.no_1m else [100_000, 1_000_000])
            rows = []
            for n in counts:
                # 1M records of 1 KiB are 1 GB: at kinesis-mock's ~2.4 MB/s (the ceiling
                # above) about 7 minutes per peer, all of it the emulator's.
                for size in (100,) if n >= 1_000_000 else (100, 1024):
                    if args.size and size not in args.size:
                        continue
                    for name, venv, script, binary in with_before(PRODUCERS, before):
                        if args.peer and not any(p in name for p in args.peer):
                            continue
                        # kinesis-mock's cost per put grows with what the shard holds:
                        # the unaggregated loop gets at most 10,000 records.
                        count = n if "loop" not in name else min(n, 10_000)
                        rows.append(producer_row(emulators, name, venv, script, binary, count,
                                                 size))
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            results["producer"] = rows
            print("\nProducer\n")
            print(table(rows, ["peer", "records", "size", "valid", "wall_s", "records_per_s",
                               "cpu_s", "cpu_us_per_record", "peak_rss_mib",
                               "kinesis_records_in_stream", "put_records_calls", "failed"]))
        if "consumer" in only:
            rows = consumer_rows(emulators, 2_000 if args.quick else 200_000, args.peer, before)
            results["consumer"] = rows
            print("\nConsumer\n")
            print(table(rows, ["peer", "records", "aggregated", "valid", "first_delivery_s",
                               "all_delivered_s", "records_per_s_after_first", "cpu_s",
                               "cpu_us_per_record", "peak_rss_mib"]))
    finally:
        emulators.stop()
        results["load_average_1m_during_run"] = load.summary()
        log(f"load average (1 min) during the run: {results['load_average_1m_during_run']}")
        Path(args.out).write_text(json.dumps(results, indent=2))
        log(f"results in {args.out}")
    draw_charts(Path(args.out).resolve(), Path(args.charts or Path(args.out).resolve().parent))


if __name__ == "__main__":
    main()
