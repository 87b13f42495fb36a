#!/usr/bin/env python3
"""Fan-out benchmarks: Herald side by side with nats-server's WebSocket listener and the
ws-broadcast reference server (docs/benchmarks.md).

    scripts/bench.py                 # the full run (about an hour on 2 cores), writes docs/
    scripts/bench.py --quick         # a smoke run in a few minutes: small numbers, 1 run
    scripts/bench.py --runs 5 --scenarios a,c
    scripts/bench.py --servers herald --scenarios a --out target/bench/try
    scripts/bench.py --no-build --servers herald --scenarios a,c --steps 50000 \
        --herald-bin before=/tmp/herald-before --herald-bin after=target/release/herald
                                     # two builds of Herald side by side, interleaved run by run
    scripts/bench.py --report-only   # rewrite the report from the last run (after editing notes.md)
    scripts/bench.py --report-only scripts/testdata/bench/results.json --out /tmp/report
                                     # the report from saved results, elsewhere (as scripts/test does)

What it does:
- builds the release binaries (`herald`, then `herald-bench` and `ws-broadcast`);
- starts a "feed" nats-server on core 0 that Herald's NATS bridge and ws-broadcast
  subscribe to (subjects bench.>);
- for every scenario, run and server: starts the server under test fresh on core 1
  (`taskset -c 1`): Herald (release, NATS bridge on bench.>; its clients over
  WebSocket, or over Server-Sent Events as `herald-sse`), nats-server with a
  WebSocket listener, or ws-broadcast; runs `herald-bench` on core 0 (`taskset -c 0`)
  against it; stops it;
- writes docs/benchmarks.md (machine, versions, method, tables of medians, ratios
  against nats-server and the project's performance targets) and SVG plots into docs/bench/.
  Hand-written analysis in docs/bench/notes.md is included as it is.

Scenarios:
  a  5,000 connections, 100 topics, 200-byte payloads; offered load stepped from 10k
     deliveries/s up to saturation
  b  one hot topic with 5,000 subscribers, stepped the same way
  c  15,000 idle connections: server RSS delta / connections; then, on the same process,
     RSS 15 s after they close, with 15,000 again, and 15 s after those close
  d  connection ramp: 10,000 connections as fast as the server takes them
  e  publishing through the cluster backplane, with and without cluster history
     (`cluster.history = "jetstream"`): HTTP batches into one Herald node whose
     backplane is the feed nats-server (then with JetStream), 100 connections over
     10 topics; offered load stepped like a. Its servers are always herald-bp and
     herald-bp-js (--servers does not apply).
  f  permessage-deflate: as a, with 350-byte realistic JSON payloads (`--realistic`)
     and clients that offer permessage-deflate (`--deflate`), against Herald without
     (`herald`) and with (`herald-deflate`) `session.compression = "deflate"`: the
     bytes on the wire and the core per delivery. Its servers are always those two.

Every figure is the median of --runs runs (default 3). Raw results (one JSON summary
per tool run) and every process's log stay in target/bench/. Needs Python 3.11+ (stdlib),
cargo, nats-server and taskset; run as root to raise the open-file limit past the hard
limit. Only loopback addresses are used.
"""

import argparse
import atexit
import datetime
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVERS = ["herald", "herald-sse", "nats-ws", "ws-broadcast"]
# Scenario e's two configurations of one Herald node (its own server list).
BACKPLANE_SERVERS = ["herald-bp", "herald-bp-js"]
# Scenario f's: Herald without and with `session.compression = "deflate"`.
DEFLATE_SERVERS = ["herald", "herald-deflate"]
LABELS = {"herald": "Herald", "herald-sse": "Herald (SSE)", "nats-ws": "nats-server (WebSocket)",
          "ws-broadcast": "ws-broadcast (reference)", "herald-bp": "Herald, backplane",
          "herald-bp-js": "Herald, backplane + cluster history",
          "herald-deflate": "Herald, permessage-deflate"}
COLORS = {"herald": "#d62728", "herald-sse": "#ff7f0e", "nats-ws": "#1f77b4", "ws-broadcast": "#2ca02c",
          "herald-bp": "#d62728", "herald-bp-js": "#9467bd", "herald-deflate": "#8c564b"}

# The project's performance targets, against nats-server's WebSocket listener in the same run.
TARGET_THROUGHPUT_RATIO = 3.0
TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
TARGET_LATENCY_LOAD = 200_000
TARGET_BYTES_PER_CONN = 4_000
# Core time per delivery, against ws-broadcast (the featureless reference), at this load.
TARGET_CORE_LOAD = 50_000

FULL = {
    "a": {"connections": 5000, "topics": 100, "steps": [10_000, 25_000, 50_000, 100_000, 150_000,
                                                         200_000, 300_000, 400_000, 600_000, 800_000]},
    "b": {"connections": 5000, "topics": 1, "steps": [10_000, 25_000, 50_000, 100_000, 200_000,
                                                       300_000, 400_000, 600_000, 800_000]},
    # after_close: seconds between the connections closing and reading RSS, twice
    # (15,000 -> 0 -> 15,000 -> 0 on one server process).
    "c": {"connections": 15_000, "hold": 5.0, "after_close": 15.0},
    "d": {"connections": 10_000, "concurrency": 500},
    "e": {"connections": 100, "topics": 10, "steps": [10_000, 25_000, 50_000, 100_000, 200_000, 400_000,
                                                     800_000]},
    "f": {"connections": 5000, "topics": 100, "size": 350, "steps": [10_000, 50_000, 100_000, 200_000]},
    # 6 s per step gives 60,000 to 4.8 million latency samples: enough for p99.9.
    "duration": 6.0, "warmup": 2.0, "drain": 10.0, "settle": 2.0, "runs": 3,
}
QUICK = {
    "a": {"connections": 500, "topics": 10, "steps": [5_000, 20_000, 50_000, 200_000, 600_000]},
    "b": {"connections": 500, "topics": 1, "steps": [5_000, 25_000, 200_000, 600_000]},
    "c": {"connections": 2_000, "hold": 1.0, "after_close": 3.0},
    "d": {"connections": 2_000, "concurrency": 200},
    "e": {"connections": 100, "topics": 10, "steps": [10_000, 50_000, 200_000]},
    "f": {"connections": 500, "topics": 10, "size": 350, "steps": [5_000, 50_000]},
    "duration": 2.0, "warmup": 0.5, "drain": 3.0, "settle": 1.0, "runs": 1,
}

# A step is saturated when the server delivers less than this share of the offered
# load, loses more than this percentage, or drops connections.
SATURATED_SHARE = 0.95
SATURATED_LOSS_PERCENT = 1.0


def register_variants(servers):
    """Labels and colours for herald@NAME servers (--herald-bin)."""
    palette = ["#d62728", "#9467bd", "#ff7f0e", "#8c564b"]
    variants = [s for s in servers if s.startswith("herald@")]
    for i, s in enumerate(variants):
        LABELS[s] = f"Herald ({s.partition('@')[2]})"
        COLORS[s] = palette[i % len(palette)]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f} s")


class Processes:
    """Every process this script started, stopped at exit."""

    def __init__(self):
        self.procs = []
        atexit.register(self.stop_all)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.stop_all()
        sys.exit(128 + signum)

    def start(self, argv, log_path, env=None):
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=10.0):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in list(self.procs):
            self.stop(proc, timeout=5.0)


class Bench:
    def __init__(self, opts):
        self.opts = opts
        self.plan = QUICK if opts.quick else FULL
        self.runs = opts.runs or self.plan["runs"]
        self.work = os.path.join(ROOT, "target", "bench")
        os.makedirs(self.work, exist_ok=True)
        # Where the measurements are saved, or (--report-only) read from.
        self.results_path = os.path.abspath(opts.report_only or os.path.join(self.work, "results.json"))
        self.procs = Processes()
        cpus = sorted(os.sched_getaffinity(0))
        self.pinned = shutil.which("taskset") is not None and len(cpus) >= 2
        self.tool_core, self.server_core = (cpus[0], cpus[1]) if self.pinned else (None, None)
        if not self.pinned:
            log("warning: fewer than 2 CPUs or no taskset: nothing is pinned; figures are not comparable")
        self.release = os.path.join(ROOT, "target", "release")
        self.invocation = 0
        self.results = []
        self.measured = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.machine = []

    # -- processes ------------------------------------------------------------------

    def pin(self, core, argv):
        return (["taskset", "-c", str(core)] + argv) if self.pinned else argv

    def start_feed(self):
        self.feed_port = free_port()
        argv = ["nats-server", "-a", "127.0.0.1", "-p", str(self.feed_port)]
        if "e" in self.opts.scenarios:
            # Cluster history's stream lives here (scenario e).
            store = os.path.join(self.work, "feed-jetstream")
            shutil.rmtree(store, ignore_errors=True)
            argv += ["-js", "-sd", store]
        argv = self.pin(self.tool_core, argv)
        self.feed = self.procs.start(argv, os.path.join(self.work, "feed-nats.log"))
        wait_port(self.feed_port, self.feed, "the feed nats-server")

    def start_server(self, name, tag):
        """Starts server `name` fresh; returns (process, ws url, nats url to publish to)."""
        logp = os.path.join(self.work, f"{tag}.{name}.log")
        port = free_port()
        if (name in ("herald", "herald-sse", "herald-deflate") or name.startswith("herald@")
                or name in BACKPLANE_SERVERS):
            conf = os.path.join(self.work, "herald.toml")
            with open(conf, "w") as f:
                f.write(herald_config(port, self.feed_port) if name not in BACKPLANE_SERVERS
                        else backplane_config(port, self.feed_port, name == "herald-bp-js"))
                if name == "herald-deflate":
                    f.write('\n[session]\ncompression = "deflate"\n')
            variant = name.partition("@")[2]
            binary = (self.opts.herald_bin or {}).get(variant) or os.path.join(self.release, "herald")
            proc = self.procs.start(self.pin(self.server_core, [binary, "--config", conf]), logp)
            wait_port(port, proc, "herald")
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
            return proc, f"ws://127.0.0.1:{port}/ws", f"nats://127.0.0.1:{self.feed_port}"
        if name == "nats-ws":
            nats_port = free_port()
            conf = os.path.join(self.work, "nats-ws.conf")
            with open(conf, "w") as f:
                f.write(nats_ws_config(nats_port, port))
            proc = self.procs.start(self.pin(self.server_core, ["nats-server", "-c", conf]), logp)
            wait_port(port, proc, "nats-server (websocket)")
            wait_port(nats_port, proc, "nats-server")
            return proc, f"ws://127.0.0.1:{port}/", f"nats://127.0.0.1:{nats_port}"
        if name == "ws-broadcast":
            proc = self.procs.start(self.pin(self.server_core, [
                os.path.join(self.release, "ws-broadcast"), "--listen", f"127.0.0.1:{port}",
                "--nats", f"nats://127.0.0.1:{self.feed_port}", "--subjects", "bench.>",
                "--strip-prefix", "bench."]), logp)
            wait_port(port, proc, "ws-broadcast")
            return proc, f"ws://127.0.0.1:{port}/", f"nats://127.0.0.1:{self.feed_port}"
        raise ValueError(name)

    def tool(self, server, url, nats_url, pid, tag, args):
        """Runs herald-bench once; returns its JSON summary (or None on failure)."""
        self.invocation += 1
        k = self.invocation
        # A fresh source address block per run, so no run meets an earlier one's
        # TIME_WAIT sockets.
        source = f"127.{1 + k % 250}.{(k // 250) % 250}.1"
        out = os.path.join(self.work, f"{tag}.{server}.json")
        argv = self.pin(self.tool_core, [os.path.join(self.release, "herald-bench"),
                                         "--target", target_of(server), "--url", url, "--nats-url", nats_url,
                                         "--pid", str(pid), "--json", out, "--source-base", source,
                                         "--label", tag] + [str(a) for a in args]
                         + (["--cores", f"{self.tool_core},{self.server_core}"] if self.pinned else []))
        logp = os.path.join(self.work, f"{tag}.{server}.tool.log")
        timeout = self.plan["duration"] + self.plan["warmup"] + self.plan["drain"] + 300
        with open(logp, "wb") as logf:
            try:
                rc = subprocess.run(argv, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout,
                                    cwd=ROOT, check=False).returncode
            except subprocess.TimeoutExpired:
                log(f"{tag} {server}: herald-bench timed out; see {logp}")
                return None
        if rc != 0:
            with open(logp, errors="replace") as f:
                last = f.read().strip().splitlines()[-1:] or ["?"]
            log(f"{tag} {server}: herald-bench failed ({rc}): {last[0]}")
            return None
        with open(out) as f:
            summary = json.load(f)
        if target_of(server) in ("herald", "herald-sse"):
            summary["herald_metrics"] = herald_metrics(url)
        return summary

    def one(self, scenario, server, run, step, args, after_close=None):
        """Starts `server`, runs the tool with `args`, stops the server. With
        `after_close`, runs the tool a second time on the same process (see `cycle`)."""
        tag = f"{scenario}{'' if step is None else '-' + str(step)}.run{run}"
        try:
            proc, url, nats_url = self.start_server(server, tag)
        except RuntimeError as e:
            log(f"{tag} {server}: cannot start: {e}")
            return None
        try:
            summary = self.tool(server, url, nats_url, proc.pid, tag, args)
            if summary and after_close:
                summary["cycle"] = self.cycle(server, url, nats_url, proc.pid, tag, args, after_close)
        finally:
            self.procs.stop(proc)
        record = {"scenario": scenario, "server": server, "run": run, "step": step, "summary": summary}
        self.results.append(record)
        self.save()
        return summary

    def cycle(self, server, url, nats_url, pid, tag, args, wait):
        """Whether memory goes back down: RSS `wait` seconds after the connections
        closed, then with the same number connected again, then `wait` seconds after
        those closed too."""
        time.sleep(wait)
        closed = rss_kib(pid)
        again = self.tool(server, url, nats_url, pid, tag + ".again", args)
        time.sleep(wait)
        return {"wait_s": wait, "rss_kib_closed": closed,
                "rss_kib_connected_again": again["server"]["rss_kib_connected"] if again else None,
                "rss_kib_closed_again": rss_kib(pid)}

    def meta(self):
        return {"quick": self.opts.quick, "runs": self.runs, "pinned": self.pinned,
                "tool_core": self.tool_core, "server_core": self.server_core,
                "scenarios": self.opts.scenarios, "servers": self.opts.servers,
                "measured": self.measured, "machine": self.machine}

    def save(self):
        with open(self.results_path, "w") as f:
            json.dump({"meta": self.meta(), "results": self.results}, f, indent=1)

    def load(self):
        """Takes the measurements of the last run from target/bench/results.json, or the
        results file given to --report-only."""
        path = self.results_path
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"bench: cannot read {path}: {e}")
        meta = saved["meta"]
        self.opts.quick = meta["quick"]
        self.plan = QUICK if meta["quick"] else FULL
        self.runs, self.pinned = meta["runs"], meta["pinned"]
        self.tool_core, self.server_core = meta["tool_core"], meta["server_core"]
        self.opts.scenarios, self.opts.servers = meta["scenarios"], meta["servers"]
        register_variants(self.opts.servers)
        self.measured, self.machine = meta["measured"], meta["machine"]
        self.results = saved["results"]

    # -- scenarios ------------------------------------------------------------------

    def common(self):
        p = self.plan
        return ["--quiet", "--settle", p["settle"], "--drain", p["drain"]]

    def stepped(self, scenario, servers=None, extra=()):
        spec = self.plan[scenario]
        p = self.plan
        steps = (self.opts.steps if scenario in "ab" else None) or spec["steps"]
        for run in range(1, self.runs + 1):
            for server in servers or self.opts.servers:
                for step in steps:
                    s = self.one(scenario, server, run, step, self.common() + [
                        "-c", spec["connections"], "--topics", spec["topics"], "--size", spec.get("size", 200),
                        "--offered", step, "--duration", p["duration"], "--warmup", p["warmup"]] + list(extra))
                    if s is None:
                        break
                    d = s["deliveries"]
                    log(f"{scenario} run {run} {server:12} offered {step:>7,}: delivered {d['per_s']:>9,.0f}/s, "
                        f"p50 {s['latency_ms']['p50']:.2f} ms, p99 {s['latency_ms']['p99']:.2f} ms, "
                        f"loss {d['loss_percent']:.2f}%, server cpu {fmt_pct(cpu(s))} (core {fmt_pct(core_busy(s, self.server_core))}), "
                        f"tool cpu {fmt_pct(s.get('tool_cpu_percent'))} (core {fmt_pct(core_busy(s, self.tool_core))})")
                    if saturated(s):
                        break

    def idle(self):
        spec = self.plan["c"]
        for run in range(1, self.runs + 1):
            for server in self.opts.servers:
                s = self.one("c", server, run, None, self.common() + [
                    "-c", spec["connections"], "--topics", 100, "--rate", 0, "--duration", spec["hold"]],
                    after_close=spec["after_close"])
                if s:
                    srv, cyc = s["server"], s["cycle"]
                    log(f"c run {run} {server:12} {s['connections']['subscribed']:,} idle: "
                        f"{srv['rss_bytes_per_connection'] / 1000:.1f} KB per connection; RSS "
                        f"{srv['rss_kib_before'] / 1024:.1f} -> {srv['rss_kib_connected'] / 1024:.1f} -> "
                        f"{fmt_mib(cyc['rss_kib_closed'])} -> {fmt_mib(cyc['rss_kib_connected_again'])} -> "
                        f"{fmt_mib(cyc['rss_kib_closed_again'])} MiB")

    def ramp(self):
        spec = self.plan["d"]
        for run in range(1, self.runs + 1):
            for server in self.opts.servers:
                s = self.one("d", server, run, None, self.common() + [
                    "-c", spec["connections"], "--topics", 100, "--rate", 0, "--duration", 0,
                    "--connect-concurrency", spec["concurrency"]])
                if s:
                    c = s["connections"]
                    log(f"d run {run} {server:12} {c['subscribed']:,} in {c['ramp_s']:.2f} s = "
                        f"{c['ramp_per_s']:,.0f}/s, connect p99 {c['connect_ms']['p99']:.1f} ms")

    def run(self):
        if self.opts.report_only:
            self.load()
            Report(self).write(self.opts.out)
            return
        if not self.opts.no_build:
            build()
        nofile = raise_nofile(300_000)
        self.machine = machine_rows(self.pinned)
        log(f"open-file limit {nofile}; ephemeral ports {read('/proc/sys/net/ipv4/ip_local_port_range')}; "
            f"pinned: {f'tool+feed on core {self.tool_core}, server on core {self.server_core}' if self.pinned else 'no'}")
        self.start_feed()
        started = time.time()
        for scenario in self.opts.scenarios:
            servers = {"e": BACKPLANE_SERVERS, "f": DEFLATE_SERVERS}.get(scenario, self.opts.servers)
            log(f"scenario {scenario} ({self.runs} run(s), servers {', '.join(servers)})")
            {"a": lambda: self.stepped("a"), "b": lambda: self.stepped("b"), "c": self.idle,
             "d": self.ramp,
             "e": lambda: self.stepped("e", BACKPLANE_SERVERS, ["--publish", "http"]),
             # Both offer permessage-deflate; only herald-deflate accepts it.
             "f": lambda: self.stepped("f", DEFLATE_SERVERS, ["--deflate", "--realistic"])}[scenario]()
        self.procs.stop(self.feed)
        log(f"measured in {time.time() - started:.0f} s")
        Report(self).write(self.opts.out)


def herald_config(port, feed_port, prefix="bench.", bridge="bench", cluster=""):
    """A Herald node whose NATS bridge reads `prefix>` from the feed nats-server."""
    return f"""# Written by scripts/bench.py.
[server]
listen = "127.0.0.1:{port}"
# No admission limits: the benchmark opens tens of thousands of connections, and
# the ramp (scenario d) measures how fast the server takes them.
max_connections = 0
max_connections_per_ip = 0
max_upgrades_per_s = 0
shutdown_grace_ms = 1000

[log]
level = "warn"
{cluster}
[[bridge.nats]]
name = "{bridge}"
url = "nats://127.0.0.1:{feed_port}"
subjects = ["{prefix}>"]
strip_prefix = "{prefix}"
"""


def target_of(server):
    """herald-bench's --target for a server of this script."""
    if server in BACKPLANE_SERVERS or server in DEFLATE_SERVERS:
        return "herald"
    return server.partition("@")[0]


def backplane_config(port, feed_port, history):
    """Scenario e: one node whose backplane is the feed nats-server, with cluster history
    or without. Each has its own subject prefix, so that the stream never holds (and
    never costs) what the node without history publishes."""
    prefix = "hist." if history else "bp."
    cluster = f'\n[cluster]\nbackplane = "bus"\nsubject_prefix = "{prefix}"\n'
    if history:
        cluster += 'history = "jetstream"\nhistory_stream = "BENCH"\n'
    return herald_config(port, feed_port, prefix, "bus", cluster)


def nats_ws_config(port, ws_port):
    return f"""# Written by scripts/bench.py.
listen: "127.0.0.1:{port}"
websocket {{
  listen: "127.0.0.1:{ws_port}"
  no_tls: true
}}
"""


def wait_ready(url, proc, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"herald exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s")


def herald_metrics(ws_url):
    """Herald's drop and lag counters after a run (`/metrics`)."""
    base = ws_url.replace("ws://", "http://").rsplit("/", 1)[0]
    wanted = ("herald_events_dropped_total", "herald_lagged_notices_total", "herald_bridge_dropped_total",
              "herald_bridge_slow_consumer_total", "herald_sessions_closed_total", "herald_events_delivered_total")
    out = {}
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(wanted):
                    name, _, value = line.rpartition(" ")
                    out[name] = float(value)
    except OSError as e:
        out["error"] = str(e)
    return out


def build():
    # One package at a time: built together, cargo unifies their dependencies' features
    # and rebuilds everything (librdkafka included) differently from a build of either.
    for argv in (["cargo", "build", "--release", "-p", "herald-broker", "--bin", "herald"],
                 ["cargo", "build", "--release", "-p", "herald-bench"]):
        log("building: " + " ".join(argv))
        try:
            subprocess.run(argv, cwd=ROOT, check=True)
        except subprocess.CalledProcessError as e:
            sys.exit(f"bench: {' '.join(argv)} failed ({e.returncode})")


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid):
    """A process's resident memory in KiB, from /proc (None once it is gone)."""
    for line in read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def back_down(cycle):
    """RSS after closing is within a fifth of what the connections added (`cycle` as
    Report.cycle gives it)."""
    before, connected, closed = cycle["before"], cycle["connected"], cycle["closed"]
    if None in (before, connected, closed):
        return None
    return closed - before <= (connected - before) / 5


def fmt_mib(kib):
    return "—" if kib is None else f"{kib / 1024:.1f}"


def read(path):
    try:
        with open(path) as f:
            return f.read().strip().replace("\t", " ")
    except OSError:
        return "?"


def cpu(s):
    return (s.get("server") or {}).get("cpu_percent")


def core_busy(s, core):
    """How busy `core` was during the measured seconds (softirq included)."""
    for c in s.get("cores", []):
        if c["core"] == core:
            return c["busy_percent"]
    return None


def fmt_pct(v):
    return "n/a" if v is None else f"{v:.0f}%"


def saturated(s):
    d = s["deliveries"]
    return (d["per_s"] < SATURATED_SHARE * d["offered_per_s"]
            or d["loss_percent"] > SATURATED_LOSS_PERCENT
            or s["connections"]["disconnected"] > 0)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def median_of(summaries):
    """A function of `fn` giving the median of `fn` over `summaries`."""
    return lambda fn: median([fn(s) for s in summaries])


# -- the report ------------------------------------------------------------------------


class Report:
    def __init__(self, bench):
        self.b = bench
        self.results = bench.results

    def records(self, scenario, server, step=None):
        """The measurements of `server` at this scenario and step that have a summary."""
        return [r for r in self.results
                if r["scenario"] == scenario and r["server"] == server and r["step"] == step and r["summary"]]

    def summaries(self, scenario, server, step=None):
        return [r["summary"] for r in self.records(scenario, server, step)]

    def steps(self, scenario):
        return self.b.plan[scenario]["steps"]

    def med(self, scenario, server, step, fn):
        return median([fn(s) for s in self.summaries(scenario, server, step)])

    def us_per_delivery(self, scenario, server, step):
        """The server's core time per delivery in µs (its core's busy time / delivered)."""
        busy = self.med(scenario, server, step, lambda s: core_busy(s, self.b.server_core))
        rate = self.med(scenario, server, step, lambda s: s["deliveries"]["per_s"])
        return None if busy is None or not rate else busy / 100 * 1e6 / rate

    def run_ratios(self, scenario, server, reference, step):
        """Core time per delivery of `server` over `reference`'s, run by run: servers
        are measured in turn within each run, so a run's two figures are minutes apart
        while separate runs may be far apart on a machine whose speed drifts. The
        spread says how far a median ratio can be trusted."""
        def per_run(name):
            out = {}
            for r in self.records(scenario, name, step):
                busy, rate = core_busy(r["summary"], self.b.server_core), r["summary"]["deliveries"]["per_s"]
                if busy is not None and rate:
                    out[r["run"]] = busy / rate
            return out
        mine, theirs = per_run(server), per_run(reference)
        return [mine[run] / theirs[run] for run in sorted(mine) if theirs.get(run)]

    def cycle(self, server):
        """Medians of scenario c's RSS (KiB) before, connected, closed, connected again
        and closed again; None if the run did not close and reconnect."""
        ss = [s for s in self.summaries("c", server) if s.get("cycle")]
        if not ss:
            return None
        m = median_of(ss)
        return {"before": m(lambda s: s["server"]["rss_kib_before"]),
                "connected": m(lambda s: s["server"]["rss_kib_connected"]),
                "closed": m(lambda s: s["cycle"]["rss_kib_closed"]),
                "again": m(lambda s: s["cycle"]["rss_kib_connected_again"]),
                "closed_again": m(lambda s: s["cycle"]["rss_kib_closed_again"]),
                "wait_s": ss[0]["cycle"]["wait_s"]}

    def curve(self, scenario, server, fn):
        """(offered step, median of fn) for every step this server was measured at."""
        points = []
        for step in self.steps(scenario):
            v = self.med(scenario, server, step, fn)
            if v is not None:
                points.append((step, v))
        return points

    def saturated_at(self, scenario, server, step):
        """Whether most runs at this step saturated the server."""
        ss = self.summaries(scenario, server, step)
        return bool(ss) and sum(saturated(s) for s in ss) * 2 > len(ss)

    def saturation(self, scenario, server):
        """Highest median deliveries/s over the steps, the step it was reached at, and
        whether any step saturated the server (if none did, the figure is a floor)."""
        best = (None, None)
        for step, v in self.curve(scenario, server, lambda s: s["deliveries"]["per_s"]):
            if best[0] is None or v > best[0]:
                best = (v, step)
        reached = any(self.saturated_at(scenario, server, st) for st in self.steps(scenario))
        return best[0], best[1], reached

    def tool_limited(self, scenario, server, step):
        """Whether the load side (the tool and the feed nats-server on their core) may
        have been the limit: its core nearly always busy, or the tool near a whole core."""
        tool = self.med(scenario, server, step, lambda s: s.get("tool_cpu_percent"))
        core = self.med(scenario, server, step, lambda s: core_busy(s, self.b.tool_core))
        return (tool is not None and tool >= 90) or (core is not None and core >= 95)

    def write(self, out_dir):
        os.makedirs(os.path.join(out_dir, "bench"), exist_ok=True)
        md = []
        quick = self.b.opts.quick
        md.append("# Benchmarks\n")
        md.append("<!-- Generated by scripts/bench.py; edit docs/bench/notes.md, not this file. -->\n")
        if quick:
            md.append("> **Quick run (`scripts/bench.py --quick`): a smoke test of the tool and the script, with "
                      "small numbers and one run, on a machine that was busy with other work. These figures are "
                      "not benchmark results and must not be quoted.** Run `scripts/bench.py` on an otherwise idle "
                      "machine for the real ones.\n")
        results = os.path.relpath(self.b.results_path, ROOT)
        if results.startswith(os.pardir):
            results = self.b.results_path
        md.append(f"Measured by `scripts/bench.py{' --quick' if quick else ''}` on {self.b.measured}. Every figure is the "
                  f"median of {self.b.runs} run(s). Raw results: `{results}`.\n")
        md += self.machine()
        md += self.method()
        if "a" in self.b.opts.scenarios:
            md += self.stepped_section("a", "(a) 5,000 connections, 100 topics, 200-byte payloads"
                                       if not quick else "(a) many connections over many topics (quick: "
                                       f"{self.b.plan['a']['connections']:,} connections, {self.b.plan['a']['topics']} topics)")
        if "b" in self.b.opts.scenarios:
            md += self.stepped_section("b", "(b) one hot topic, every connection subscribed"
                                       + (f" (quick: {self.b.plan['b']['connections']:,})" if quick else " (5,000)"))
        if "c" in self.b.opts.scenarios:
            md += self.idle_section()
        if "d" in self.b.opts.scenarios:
            md += self.ramp_section()
        if "e" in self.b.opts.scenarios:
            md += self.stepped_section("e", "(e) publishing through the backplane, with and without cluster "
                                       "history (100 connections, 10 topics, HTTP batches)", BACKPLANE_SERVERS)
        if "f" in self.b.opts.scenarios:
            md += self.stepped_section("f", "(f) permessage-deflate: 5,000 connections, 100 topics, 350-byte "
                                       "realistic JSON payloads, with and without compression", DEFLATE_SERVERS)
            md += self.wire_bytes("f", DEFLATE_SERVERS)
        md += self.targets()
        notes = os.path.join(ROOT, "docs", "bench", "notes.md")
        if os.path.exists(notes):
            md.append("## Analysis\n")
            with open(notes) as f:
                md.append(f.read().strip() + "\n")
        md.append("## Rerunning\n")
        md.append("```sh\nscripts/bench.py            # everything, 3 runs (about an hour on 2 cores)\n"
                  "scripts/bench.py --quick    # a smoke run of every code path\n"
                  "scripts/bench.py --report-only   # rewrite this page from target/bench/results.json\n"
                  "scripts/bench.py --help\n```\n")
        md.append("The load tool alone, against any Herald: `cargo run --release -p herald-bench -- --help` "
                  "(see the README's Benchmarks section).\n")
        path = os.path.join(out_dir, "benchmarks.md")
        with open(path, "w") as f:
            f.write("\n".join(md))
        log(f"wrote {path} and {os.path.join(out_dir, 'bench')}/*.svg")

    def machine(self):
        return ["## Machine and versions\n", "| | |", "|---|---|"] + self.b.machine + [""]

    def method(self):
        p = self.b.plan
        pin = ("The server under test runs alone on core 1 (`taskset -c 1`); the load tool and the feed "
               "nats-server share core 0 (`taskset -c 0`)." if self.b.pinned else
               "**Nothing was pinned** (fewer than 2 CPUs or no taskset).")
        return [
            "## Method\n",
            f"- {pin} Each server is started fresh for every measurement and stopped after it.",
            ("- Servers under test: **Herald** (release build; a NATS bridge on `bench.>` with "
             "`strip_prefix = \"bench.\"`; otherwise the defaults, no admission limits); **Herald (SSE)**, the "
             "same server with every client on `GET /sse?topics=…` instead of a WebSocket (`--target "
             "herald-sse`: the same JSON messages as `data:` lines, each event with its resume `id:`); "
             "**nats-server** with "
             "its WebSocket listener (`no_tls`), clients speaking the NATS protocol over WebSocket; "
             "**ws-broadcast**, a minimal tokio-tungstenite server that forwards each NATS message's payload "
             "unchanged to the clients subscribed to its topic (no envelope, no sequence, no history, no "
             "heartbeat), the \"no features at all\" reference."),
            ("- Messages are published with core NATS to `bench.t<i>`: to the feed nats-server for Herald and "
             "ws-broadcast (which subscribe to it), and to the server under test itself for nats-server. "
             "Topics are spread round-robin over the connections, one topic per connection."),
            ("- Each payload is a 200-byte JSON object carrying its send time, topic and sequence; latency is "
             "publish → receipt by the client, measured on one monotonic clock in the load tool "
             "(`herald-bench`), into HdrHistograms. Offered load is messages/s × subscribers per topic."),
            (f"- A measurement: connect and subscribe every client, settle {p['settle']:g} s, publish for "
             f"{p['warmup']:g} s of warm-up and {p['duration']:g} s measured, then wait up to {p['drain']:g} s "
             "for the last deliveries. *Delivered/s* counts deliveries received during the measured seconds; "
             "*loss* compares the deliveries of the measured messages with what arrived by the end."),
            (f"- Offered load steps up until a server saturates: it delivers less than "
             f"{SATURATED_SHARE:.0%} of the offered load, loses more than {SATURATED_LOSS_PERCENT:g}%, or drops "
             "connections. *Saturation* is the highest median delivered/s reached."),
            ("- *CPU* is the server process's user+system time over the measured seconds, in percent of one core "
             "(`/proc/<pid>/stat`); *(core)* is how busy its core was (`/proc/stat`), which also counts the "
             "kernel's softirq work on that core: over loopback, much of the TCP work for what the server sends "
             "runs there without being charged to the process. Memory is the server's resident set (`VmRSS`)."),
            ("- A cell marked *(load side busy)* means the load tool may have been the limit at that step: its "
             "core (shared with the feed nats-server) was at least 95% busy, or the tool itself used 90% of a core."),
            "",
        ]

    def wire_bytes(self, scenario, servers):
        """Bytes the clients read per delivery, and the server's core per delivery."""
        md = [("Bytes read off the sockets per delivery (frame headers, replies and pings "
               "included), and the server's core time per delivery (core busy / delivered):\n"),
              "| offered/s | " + " | ".join(f"{LABELS[s]}: bytes, µs of core" for s in servers) + " |",
              "|---:|" + "---|" * len(servers)]
        for step in self.steps(scenario):
            cells = []
            for server in servers:
                b = self.med(scenario, server, step, lambda s: s["deliveries"].get("wire_bytes_per_delivery"))
                us = self.us_per_delivery(scenario, server, step)
                cells.append("—" if b is None else f"{b:,.0f} B, {'—' if us is None else f'{us:.1f} µs'}")
            md.append(f"| {step:,} | " + " | ".join(cells) + " |")
        return md + [""]

    def stepped_section(self, scenario, title, servers=None):
        servers = servers or self.b.opts.servers
        md = [f"## {title}\n"]
        head = "| offered/s | " + " | ".join(
            f"{LABELS[s]}: delivered/s, p50 / p99 / p99.9 ms, loss, CPU (core)" for s in servers) + " |"
        md += [head, "|---:|" + "---|" * len(servers)]
        for step in self.steps(scenario):
            cells = []
            any_value = False
            for server in servers:
                ss = self.summaries(scenario, server, step)
                if not ss:
                    cells.append("—")
                    continue
                any_value = True
                m = median_of(ss)
                cell = (f"{m(lambda s: s['deliveries']['per_s']):,.0f}, "
                        f"{m(lambda s: s['latency_ms']['p50']):.2f} / {m(lambda s: s['latency_ms']['p99']):.2f} / "
                        f"{m(lambda s: s['latency_ms']['p999']):.2f}, "
                        f"{m(lambda s: s['deliveries']['loss_percent']):.2f}%, {fmt_pct(m(cpu))}"
                        f" ({fmt_pct(m(lambda s: core_busy(s, self.b.server_core)))})")
                if self.saturated_at(scenario, server, step):
                    cell += " (saturated)"
                if self.tool_limited(scenario, server, step):
                    cell += " (load side busy)"
                cells.append(cell)
            if any_value:
                md.append(f"| {step:,} | " + " | ".join(cells) + " |")
        md.append("")
        sat = []
        for server in servers:
            v, step, reached = self.saturation(scenario, server)
            if v is None:
                continue
            if reached:
                sat.append(f"{LABELS[server]} **{v:,.0f}/s** (at {step:,} offered)")
            else:
                sat.append(f"{LABELS[server]} not reached (**≥ {v:,.0f}/s**, the highest step)")
        if sat:
            md.append("Saturation: " + "; ".join(sat) + ".\n")
        knee = []
        for server in servers:
            ok = [step for step in self.steps(scenario)
                  if (p99 := self.med(scenario, server, step, lambda s: s["latency_ms"]["p99"])) is not None
                  and p99 < TARGET_P99_MS and not self.saturated_at(scenario, server, step)]
            if any(self.summaries(scenario, server, st) for st in self.steps(scenario)):
                knee.append(f"{LABELS[server]} {max(ok):,}/s" if ok else f"{LABELS[server]} none")
        if knee:
            md.append(f"Highest offered load served with a median p99 under {TARGET_P99_MS:g} ms (where the "
                      "server's core is not yet full and nothing queues): " + "; ".join(knee) + ".\n")
        lag = []
        for server in servers:
            ss = [s for st in self.steps(scenario) for s in self.summaries(scenario, server, st)]
            lagged = sum(s["deliveries"]["lagged_dropped"] for s in ss)
            disc = sum(s["connections"]["disconnected"] for s in ss)
            lost = sum(s["deliveries"]["lost"] for s in ss)
            dropped = {}
            for s in ss:
                for name, value in s.get("herald_metrics", {}).items():
                    if name.startswith(("herald_events_dropped_total", "herald_bridge_dropped_total",
                                        "herald_bridge_slow_consumer_total")) and value:
                        dropped[name] = dropped.get(name, 0) + value
            if lagged or disc or lost or dropped:
                text = (f"{LABELS[server]}: {lost:,} deliveries lost, {lagged:,} reported in `lagged` notices, "
                        f"{disc:,} connections dropped")
                if dropped:
                    text += " (Herald's counters: " + ", ".join(
                        f"`{k}` {v:,.0f}" for k, v in sorted(dropped.items())) + ")"
                lag.append(text)
        if lag:
            md.append("Loss over all steps and runs: " + "; ".join(lag) + ".\n")
        tp = os.path.join("bench", f"{scenario}-throughput.svg")
        lat = os.path.join("bench", f"{scenario}-latency.svg")
        out = self.b.opts.out
        steps = self.steps(scenario)
        line_chart(os.path.join(out, tp), f"Scenario ({scenario}): delivered vs offered",
                   "offered deliveries/s", "delivered deliveries/s",
                   [(LABELS[s], COLORS[s], "", self.curve(scenario, s, lambda x: x["deliveries"]["per_s"]))
                    for s in servers], diagonal=True, xmax=max(steps))
        series = []
        for s in servers:
            for key, dash in (("p50", ""), ("p99", "6,4"), ("p999", "2,3")):
                series.append((f"{LABELS[s]} {key.replace('p999', 'p99.9')}", COLORS[s], dash,
                               self.curve(scenario, s, lambda x, k=key: x["latency_ms"][k])))
        line_chart(os.path.join(out, lat), f"Scenario ({scenario}): publish → receipt latency",
                   "offered deliveries/s", "latency (ms, log scale)", series, logy=True, xmax=max(steps))
        md.append(f"![delivered vs offered]({tp})\n")
        md.append(f"![latency percentiles vs offered]({lat})\n")
        return md

    def idle_section(self):
        n = self.b.plan["c"]["connections"]
        md = [f"## (c) {n:,} idle connections: memory per connection\n",
              ("Each connection is upgraded and subscribed to one of 100 topics, then idles; RSS is read after "
               "the settle time. Memory per connection = (RSS with the connections − RSS before) / connections.\n"),
              "| server | connections | RSS before | RSS connected | per connection |", "|---|---:|---:|---:|---:|"]
        for server in self.b.opts.servers:
            ss = self.summaries("c", server)
            if not ss:
                md.append(f"| {LABELS[server]} | — | — | — | — |")
                continue
            m = median_of(ss)
            md.append(f"| {LABELS[server]} | {m(lambda s: s['connections']['subscribed']):,.0f} | "
                      f"{m(lambda s: s['server']['rss_kib_before']) / 1024:.1f} MiB | "
                      f"{m(lambda s: s['server']['rss_kib_connected']) / 1024:.1f} MiB | "
                      f"**{m(lambda s: s['server']['rss_bytes_per_connection']) / 1000:.1f} KB** |")
        md.append("")
        cycles = {server: self.cycle(server) for server in self.b.opts.servers}
        if any(cycles.values()):
            wait = next(c["wait_s"] for c in cycles.values() if c)
            md += [(f"**Does memory go back down?** On the same server process: the connections close, RSS is read "
                    f"{wait:g} s later; as many connect again and close again, RSS read {wait:g} s later again. "
                    "*Back down* means the RSS after closing is within a fifth of the growth the connections "
                    "caused (closed − before ≤ (connected − before) / 5).\n"),
                   "| server | before | connected | closed | connected again | closed again | back down |",
                   "|---|---:|---:|---:|---:|---:|:-:|"]
            for server, c in cycles.items():
                if not c:
                    continue
                md.append(f"| {LABELS[server]} | {fmt_mib(c['before'])} MiB | {fmt_mib(c['connected'])} MiB | "
                          f"{fmt_mib(c['closed'])} MiB | {fmt_mib(c['again'])} MiB | "
                          f"{fmt_mib(c['closed_again'])} MiB | {yes(back_down(c))} |")
            md.append("")
        return md

    def ramp_section(self):
        spec = self.b.plan["d"]
        md = [f"## (d) connection ramp: {spec['connections']:,} connections\n",
              (f"As fast as the server accepts them, {spec['concurrency']} set up at a time (TCP connect, upgrade, "
               "subscription confirmed). The ramp rate is connections / (last subscription − first attempt).\n"),
              "| server | subscribed | failed | ramp | connections/s | connect p50 / p99 / max ms |",
              "|---|---:|---:|---:|---:|---|"]
        for server in self.b.opts.servers:
            ss = self.summaries("d", server)
            if not ss:
                md.append(f"| {LABELS[server]} | — | — | — | — | — |")
                continue
            m = median_of(ss)
            md.append(f"| {LABELS[server]} | {m(lambda s: s['connections']['subscribed']):,.0f} | "
                      f"{m(lambda s: s['connections']['failed']):,.0f} | {m(lambda s: s['connections']['ramp_s']):.2f} s | "
                      f"**{m(lambda s: s['connections']['ramp_per_s']):,.0f}** | "
                      f"{m(lambda s: s['connections']['connect_ms']['p50']):.1f} / "
                      f"{m(lambda s: s['connections']['connect_ms']['p99']):.1f} / "
                      f"{m(lambda s: s['connections']['connect_ms']['max']):.1f} |")
        md.append("")
        return md

    def targets(self):
        md = ["## Against the targets\n",
              "Ratios are Herald's figure over nats-server's WebSocket listener's, from this same run.\n",
              "| target | Herald | nats-server | ratio or margin | met |", "|---|---:|---:|---:|:-:|"]
        servers = self.b.opts.servers
        if "herald" not in servers:
            return md[:1] + ["Herald was not measured in this run.\n"]
        has_nats = "nats-ws" in servers
        if "a" in self.b.opts.scenarios:
            h, _, h_reached = self.saturation("a", "herald")
            n, _, n_reached = self.saturation("a", "nats-ws") if has_nats else (None, None, False)
            if h is not None and n:
                ratio = h / n
                floor = lambda reached: "" if reached else "≥ "
                # A server that never saturated gives a floor, which bounds the ratio
                # from one side only.
                met = ratio >= TARGET_THROUGHPUT_RATIO
                if h_reached and n_reached:
                    verdict = yes(met)
                elif met and not h_reached and n_reached:
                    verdict = "yes"
                elif not met and h_reached and not n_reached:
                    verdict = yes(False)
                else:
                    verdict = "open (not saturated: add steps)"
                md.append(f"| (a) saturation ≥ {TARGET_THROUGHPUT_RATIO:g}× nats-server | {floor(h_reached)}{h:,.0f}/s | "
                          f"{floor(n_reached)}{n:,.0f}/s | {ratio:.2f}× | {verdict} |")
            step = TARGET_LATENCY_LOAD
            if step in self.steps("a"):
                hp50 = self.med("a", "herald", step, lambda s: s["latency_ms"]["p50"])
                hp99 = self.med("a", "herald", step, lambda s: s["latency_ms"]["p99"])
                np99 = self.med("a", "nats-ws", step, lambda s: s["latency_ms"]["p99"]) if has_nats else None
                np50 = self.med("a", "nats-ws", step, lambda s: s["latency_ms"]["p50"]) if has_nats else None
                if hp50 is not None:
                    md.append(f"| (a) p50 at {step // 1000}k/s < {TARGET_P50_MS:g} ms | {hp50:.2f} ms | "
                              f"{'—' if np50 is None else f'{np50:.2f} ms'} | {hp50 - TARGET_P50_MS:+.2f} ms | "
                              f"{yes(hp50 < TARGET_P50_MS)} |")
                if hp99 is not None:
                    md.append(f"| (a) p99 at {step // 1000}k/s < {TARGET_P99_MS:g} ms | {hp99:.2f} ms | "
                              f"{'—' if np99 is None else f'{np99:.2f} ms'} | {hp99 - TARGET_P99_MS:+.2f} ms | "
                              f"{yes(hp99 < TARGET_P99_MS)} |")
                    if np99 is not None:
                        md.append(f"| (a) p99 at {step // 1000}k/s ≤ nats-server's | {hp99:.2f} ms | {np99:.2f} ms | "
                                  f"{hp99 / np99 if np99 else float('inf'):.2f}× | {yes(hp99 <= np99)} |")
            else:
                md.append(f"| (a) latency at {step // 1000}k/s | not measured (no such step in this run) | | | |")
            step = TARGET_CORE_LOAD
            if step in self.steps("a") and "ws-broadcast" in servers:
                hc, rc = self.us_per_delivery("a", "herald", step), self.us_per_delivery("a", "ws-broadcast", step)
                if hc is not None and rc is not None:
                    ratios = self.run_ratios("a", "herald", "ws-broadcast", step)
                    spread = f" (runs {min(ratios):.2f}–{max(ratios):.2f}×)" if len(ratios) > 1 else ""
                    # Met or missed in every run, or the runs disagree: then the
                    # difference is within what the machine's drift can make.
                    if not ratios:
                        verdict = yes(hc <= rc)
                    elif max(ratios) <= 1 or min(ratios) > 1:
                        verdict = yes(max(ratios) <= 1)
                    else:
                        verdict = "within noise (runs on both sides)"
                    md.append(f"| (a) core time per delivery at {step // 1000}k/s ≤ ws-broadcast's "
                              f"(nats-server column: ws-broadcast) | {hc:.1f} µs | {rc:.1f} µs | "
                              f"{hc / rc:.2f}×{spread} | {verdict} |")
            below = [st for st in self.steps("a") if self.summaries("a", "herald", st)
                     and not self.saturated_at("a", "herald", st)]
            losses = [self.med("a", "herald", st, lambda s: s["deliveries"]["lost"]) for st in below]
            losses = [x for x in losses if x is not None]
            if losses:
                md.append(f"| (a) zero loss below saturation | {sum(losses):,.0f} lost | | | {yes(sum(losses) == 0)} |")
        if "c" in self.b.opts.scenarios:
            h = self.med("c", "herald", None, lambda s: s["server"]["rss_bytes_per_connection"])
            n = self.med("c", "nats-ws", None, lambda s: s["server"]["rss_bytes_per_connection"]) if has_nats else None
            if h is not None:
                md.append(f"| (c) memory per idle connection ≤ {TARGET_BYTES_PER_CONN / 1000:g} KB | {h / 1000:.1f} KB | "
                          f"{'—' if n is None else f'{n / 1000:.1f} KB'} | {(h - TARGET_BYTES_PER_CONN) / 1000:+.1f} KB | "
                          f"{yes(h <= TARGET_BYTES_PER_CONN)} |")
            c = self.cycle("herald")
            if c:
                md.append(f"| (c) RSS goes back down once the connections close | {fmt_mib(c['connected'])} → "
                          f"{fmt_mib(c['closed'])} MiB ({fmt_mib(c['before'])} before) | | | "
                          f"{yes(back_down(c))} |")
        if self.b.opts.quick:
            md.append("\n*Quick run: the table shows that the report works, not how Herald performs.*")
        md.append("")
        return md


def machine_rows(pinned):
    """The machine and the versions measured, as table rows (recorded when measuring)."""
    cpu_model = "?"
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    git = run_out(["git", "rev-parse", "--short", "HEAD"])
    dirty = " (with uncommitted changes)" if run_out(["git", "status", "--porcelain", "--untracked-files=no"]) else ""
    lock = read(os.path.join(ROOT, "Cargo.lock"))
    tt = "?"
    lines = lock.splitlines()
    for i, line in enumerate(lines):
        if line == 'name = "tokio-tungstenite"' and i + 1 < len(lines):
            tt = lines[i + 1].split('"')[1]
    return [
        f"| CPU | {cpu_model}, {os.cpu_count()} cores |",
        f"| memory | {mem} |",
        f"| kernel | {platform.system()} {platform.release()} |",
        f"| Herald | commit {git}{dirty}, release build |",
        f"| nats-server | {run_out(['nats-server', '--version'])} |",
        f"| ws-broadcast | tokio-tungstenite {tt} (`bench/src/bin/ws-broadcast.rs`) |",
        f"| Rust | {run_out(['rustc', '--version'])} |",
        (f"| open files / ephemeral ports | {resource.getrlimit(resource.RLIMIT_NOFILE)[0]:,} / "
         f"{read('/proc/sys/net/ipv4/ip_local_port_range')} |"),
        f"| pinned | {'yes: load tool and feed nats-server on one core, server on another' if pinned else 'no'} |",
    ]


def yes(ok):
    return "—" if ok is None else "yes" if ok else "**no**"


def run_out(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30,
                              check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# -- SVG plots -------------------------------------------------------------------------


def nice_ticks(lo, hi, n=6):
    span = max(hi - lo, 1e-9)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-6:
        ticks.append(t)
        t += step
    return ticks


def short(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def line_chart(path, title, xlabel, ylabel, series, logy=False, diagonal=False, xmax=None):
    """A line chart as hand-written SVG. series: (name, color, dasharray, [(x, y)])."""
    w, h = 760, 440
    left, right, top, bottom = 80, 250, 40, 60
    pw, ph = w - left - right, h - top - bottom
    xs = [x for *_, pts in series for x, _ in pts]
    ys = [y for *_, pts in series for _, y in pts if not logy or y > 0]
    x_hi = max(xs + [xmax or 0, 1])
    if logy:
        y_lo = 10 ** math.floor(math.log10(min(ys))) if ys else 0.1
        y_hi = 10 ** math.ceil(math.log10(max(ys))) if ys else 10
        if y_hi <= y_lo:
            y_hi = y_lo * 10
    else:
        y_lo, y_hi = 0, max(ys + ([x_hi] if diagonal else []) + [1])
        y_hi = max(nice_ticks(0, y_hi)[-1], y_hi)
    x_ticks = nice_ticks(0, x_hi)
    x_hi = max(x_hi, x_ticks[-1])

    def px(x):
        return left + pw * x / x_hi

    def py(y):
        if logy:
            y = max(y, y_lo)
            return top + ph * (1 - (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)))
        return top + ph * (1 - (y - y_lo) / (y_hi - y_lo))

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'font-family="sans-serif" font-size="12">'),
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>']
    for t in x_ticks:
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" stroke="#eee"/>')
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 18}" text-anchor="middle">{short(t)}</text>')
    if logy:
        y_ticks = [10 ** e for e in range(round(math.log10(y_lo)), round(math.log10(y_hi)) + 1)]
    else:
        y_ticks = nice_ticks(0, y_hi)
    for t in y_ticks:
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 8}" y="{py(t) + 4:.1f}" text-anchor="end">{short(t) if not logy else f"{t:g}"}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 18}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text transform="translate(20 {top + ph / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    if diagonal:
        end = min(x_hi, y_hi)
        out.append(f'<line x1="{px(0):.1f}" y1="{py(0):.1f}" x2="{px(end):.1f}" y2="{py(end):.1f}" '
                   f'stroke="#999" stroke-dasharray="4,4"/>')
    legend_y = top + 10
    if diagonal:
        out.append(f'<line x1="{left + pw + 15}" y1="{legend_y}" x2="{left + pw + 45}" y2="{legend_y}" '
                   f'stroke="#999" stroke-dasharray="4,4"/>')
        out.append(f'<text x="{left + pw + 52}" y="{legend_y + 4}">delivered = offered</text>')
        legend_y += 20
    for name, color, dash, pts in series:
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        if pts:
            d = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(pts))
            out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"{dash_attr}/>')
            for x, y in pts:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        out.append(f'<line x1="{left + pw + 15}" y1="{legend_y}" x2="{left + pw + 45}" y2="{legend_y}" '
                   f'stroke="{color}" stroke-width="2"{dash_attr}/>')
        out.append(f'<text x="{left + pw + 52}" y="{legend_y + 4}">{esc(name)}</text>')
        legend_y += 20
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="small numbers, one run: a smoke test, not a benchmark")
    ap.add_argument("--runs", type=int, default=0, help="runs per figure (default 3; 1 with --quick)")
    ap.add_argument("--scenarios", default="a,b,c,d", help="comma-separated subset of a,b,c,d,e,f")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"),
                    help="where benchmarks.md and bench/*.svg go (default docs/)")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    ap.add_argument("--herald-bin", metavar="NAME=PATH", action="append", default=[],
                    help="measure this herald binary as server herald@NAME instead of target/release/herald; "
                         "give it twice (e.g. before=...,after=...) to compare two builds side by side in one "
                         "run, interleaved run by run")
    ap.add_argument("--steps", metavar="N,N",
                    help="offered loads (deliveries/s) for scenarios a and b instead of the plan's")
    ap.add_argument("--report-only", nargs="?", const=os.path.join(ROOT, "target", "bench", "results.json"),
                    metavar="RESULTS",
                    help="measure nothing: rewrite the report from target/bench/results.json (after editing "
                         "docs/bench/notes.md), or from the results file RESULTS; with --out, elsewhere than docs/")
    opts = ap.parse_args()
    opts.scenarios = [s for s in opts.scenarios.split(",") if s]
    opts.servers = [s for s in opts.servers.split(",") if s]
    if opts.steps:
        try:
            opts.steps = [int(n) for n in opts.steps.split(",") if n]
        except ValueError:
            ap.error(f"--steps: expected comma-separated numbers, got {opts.steps!r}")
    bins = {}
    for spec in opts.herald_bin:
        name, _, path = spec.partition("=")
        if not name or not path or not os.access(path, os.X_OK):
            ap.error(f"--herald-bin: expected NAME=PATH of an executable file, got {spec!r}")
        bins[name] = os.path.abspath(path)
    opts.herald_bin = bins
    if bins:
        expanded = []
        for s in opts.servers:
            expanded += [f"herald@{n}" for n in bins] if s == "herald" else [s]
        opts.servers = expanded
    for s in opts.scenarios:
        if s not in "abcdef" or len(s) != 1:
            ap.error(f"unknown scenario {s!r}")
    for s in opts.servers:
        if s not in SERVERS and not s.startswith("herald@"):
            ap.error(f"unknown server {s!r}")
    register_variants(opts.servers)
    if not opts.report_only and shutil.which("nats-server") is None:
        ap.error("nats-server is not on PATH (Debian: apt-get install nats-server)")
    Bench(opts).run()


if __name__ == "__main__":
    main()
