"""bench/compare: the orders service measured against the floor (bare tonic
with TLS, sent the same bearer token) and side by side with a Python grpc.aio
server, in one run on one machine. Run it through ``bench/compare``, which
prepares the Python environment, h2load, perf and the binaries first.

Servers (each started fresh for each measurement, pinned to one core with
``taskset``; the load generator is pinned to the other):

1. the floor: ``bench-bare-server --tls-cert --tls-key``, the same proto on
   tonic's own TLS (rustls) with the full service's certificate, in memory,
   no middleware, sent the same ``authorization`` header by the same client.
   Any secure tonic server pays for TLS and for receiving the token, so this
   is what the full service is measured against;
2. the full service: ``orders-server`` in production mode (TLS, ES256 JWTs,
   every middleware layer, JSON access logs, SQLite with ``synchronous =
   FULL``);
3. Python grpc.aio: ``bench/python/server.py``, TLS and PyJWT ES256 per call,
   in memory;
4. a reference for GetOrder only: the same bare server in plaintext.

Measurements: GetOrder at the top rate (closed loop) in interleaved rounds
(floor, full, plaintext, floor, full, ...: the machine's drift hits each
server alike), with the server's CPU time per call from ``/proc/PID/stat``,
and medians over the rounds; GetOrder at half of the floor's top rate (open
loop, for p99); RegisterOrder (the full service durable, with group commit
and with one transaction per call); WatchOrder fan-out (watchers, memory,
delivery latency); idle memory; start to SERVING; GetOrder again with
``h2load`` as an independent load generator; the cost of authentication.
Then the breakdown: ``bench/breakdown.py``'s profile of the floor and the
full service under GetOrder load, with perf, server CPU per call by
component (skipped, with the reason, where perf cannot profile).

Targets, from the ratios of this one run (a benchmark: they never fail it):
full GetOrder at least 0.80× the floor's calls/s, and so its server CPU per
call within 1.25× the floor's; durable RegisterOrder at least 0.50× the full
service's GetOrder calls/s; full GetOrder at least 30× Python grpc.aio's; p99
at half of the floor's top rate (open loop) at most 1.5× the floor's; event
delivery p50 to 1,000 watchers at most 2 ms, the durable write of the change
included; idle resident memory at most 20 MiB, and at most 80 MiB with 1,000
watchers. Guards, figures the targets do not cover, kept from getting worse:
start to SERVING at most 200 ms, a token cache hit at most 2% of a call's CPU.

Results: ``latest.md`` (tables, ratios, targets, the breakdown's table),
``latest.json`` (every figure) and ``latest.png`` (a chart), with
``breakdown.md``, ``breakdown.json`` and ``breakdown.png`` (its chart), in the
output folder, and in a full run the README's benchmark table.
``--only-rounds`` runs the GetOrder rounds alone, without the breakdown, and
``--also LABEL=PATH`` adds another build of orders-server to them (a profile
or a change measured against the same floor, interleaved).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

# The full service run another way in the GetOrder rounds, interleaved with
# the rest: label -> its configuration (environment). `grpc-only` is the same
# binary with gRPC-Web, Connect and CORS off (`server.web_protocols`): its
# CPU per call against the full service's shows what serving those
# protocols costs a gRPC call.
VARIANTS = {"grpc-only": {"ORDERS__SERVER__WEB_PROTOCOLS": "false"}}
VARIANT_ROWS = {"grpc-only": "the full service with gRPC-Web and Connect off (`server.web_protocols = false`)"}
README = REPO / "README.md"
README_BEGIN = "<!-- bench/compare:begin -->"
README_END = "<!-- bench/compare:end -->"

# The server gets core 0, the load generator (and h2load) core 1.
SERVER_CORE = "0"
LOAD_CORE = "1"

ISSUER = "orders-dev"  # what `orders-server dev-token` puts in its tokens
AUDIENCE = "orders"


@dataclass(frozen=True)
class Plan:
    """How long and how hard each measurement runs."""

    warmup: float
    duration: float
    connections: int
    concurrency: int
    open_concurrency: int
    register_concurrency: int
    watchers: int
    watch_orders: int
    event_rate: float
    watch_duration: float
    startups: int
    h2load_duration: float
    h2load_clients: int
    h2load_streams: int
    # GetOrder at the top rate: this many rounds of `round_duration` seconds
    # (after the warm-up) per server, interleaved.
    rounds: int
    round_duration: float


FULL = Plan(
    warmup=3,
    duration=15,
    connections=4,
    concurrency=64,
    open_concurrency=1000,
    register_concurrency=64,
    watchers=1000,
    watch_orders=10,
    event_rate=20,
    watch_duration=12,
    startups=5,
    h2load_duration=12,
    h2load_clients=4,
    h2load_streams=16,
    rounds=3,
    round_duration=6,
)

SMOKE = Plan(
    warmup=0.3,
    duration=1.0,
    connections=2,
    concurrency=8,
    open_concurrency=64,
    register_concurrency=8,
    watchers=50,
    watch_orders=5,
    event_rate=20,
    watch_duration=1.0,
    startups=2,
    h2load_duration=1,
    h2load_clients=2,
    h2load_streams=4,
    # Two, so the smoke run checks the interleaving and the medians too.
    rounds=2,
    round_duration=0.5,
)


def log(message: str) -> None:
    print(f"bench/compare: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """Our environment without ORDERS_* (a developer's settings must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ORDERS")}


def cores_busy() -> list[tuple[int, int]]:
    """(busy, total) jiffies of cpu0 and cpu1 from /proc/stat."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + v[4]  # idle + iowait
            out.append((sum(v) - idle, sum(v)))
    return out


def busy_percent(before, after) -> list[float]:
    return [
        round(100.0 * (a[0] - b[0]) / max(1, a[1] - b[1]), 1) for b, a in zip(before, after)
    ]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Failure(Exception):
    """A measurement that could not be made; the run goes on and fails at the end."""


@dataclass
class Server:
    kind: str  # floor | bare | full | full:LABEL | python
    endpoint: str
    proc: subprocess.Popen
    log_path: Path
    tls: bool
    admin: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> str:
        """SIGTERM, wait (SIGKILL after 20 s); returns what the server printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.output()


@dataclass
class Bench:
    args: argparse.Namespace
    plan: Plan
    bin_dir: Path
    work: Path
    certs: Path = field(init=False)
    token_file: Path = field(init=False)
    token: str = field(init=False)
    results: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    # Other builds of orders-server for the GetOrder rounds: label -> binary.
    also: dict = field(default_factory=dict)

    def bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    # --- set-up ----------------------------------------------------------------

    def prepare(self) -> None:
        self.certs = self.work / "certs"
        env = clean_env()
        run([self.bin("orders-server"), "dev-certs", "--dir", str(self.certs)], env=env, cwd=REPO)
        token = run(
            [
                self.bin("orders-server"),
                "dev-token",
                "--dir",
                str(self.certs),
                "--sub",
                "alice",
                "--scope",
                "orders:read orders:write",
                "--ttl",
                "7200",
            ],
            env=env,
            cwd=REPO,
        ).strip()
        self.token = token
        self.token_file = self.work / "token"
        self.token_file.write_text(token)

    # --- servers ---------------------------------------------------------------

    def _spawn(self, kind: str, argv: list[str], env: dict) -> tuple[subprocess.Popen, Path]:
        log_path = self.work / f"{kind}-{time.monotonic_ns()}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                ["taskset", "-c", SERVER_CORE, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        return proc, log_path

    def full_env(self, port: int, admin: int, extra: dict | None = None) -> dict:
        env = clean_env()
        env.update(
            {
                "ORDERS_ENV": "production",
                "ORDERS_CONFIG_DIR": str(REPO / "config"),
                "ORDERS__SERVER__ADDR": f"127.0.0.1:{port}",
                "ORDERS__ADMIN__ADDR": f"127.0.0.1:{admin}",
                "ORDERS__TLS__CERT": str(self.certs / "server.pem"),
                "ORDERS__TLS__KEY": str(self.certs / "server.key"),
                "ORDERS__AUTH__ISSUER": ISSUER,
                "ORDERS__AUTH__AUDIENCE": AUDIENCE,
                "ORDERS__AUTH__JWKS_FILE": str(self.certs / "jwks.json"),
                "ORDERS__DATABASE__URL": f"sqlite://{self.work / f'orders-{time.monotonic_ns()}.db'}",
                # Only shortens the stop between measurements; serving is unchanged.
                "ORDERS__SHUTDOWN__DRAIN_SECS": "0",
                # The load generator is one caller standing in for many: its
                # calls are bounded by the server's limit, not one caller's,
                # and its rate by what the server can serve, not one caller's
                # rate (0: no rate limit), or the top rate measured would be
                # the per-caller rate. A WatchOrder stream counts against the
                # quota for as long as it is open, so the quota is above all
                # the harness holds open at once (1,000 watchers and their
                # updates; at 1,000 the updates were refused
                # RESOURCE_EXHAUSTED).
                "ORDERS__SERVER__MAX_CALLS_PER_CALLER": "100000",
                "ORDERS__SERVER__MAX_CALL_RATE_PER_CALLER": "0",
            }
        )
        env.update(extra or {})
        return env

    def start(self, kind: str, extra_env: dict | None = None) -> Server:
        if kind == "bare":
            port = free_port()
            proc, log_path = self._spawn(
                kind, [self.bin("bench-bare-server"), "--addr", f"127.0.0.1:{port}"], clean_env()
            )
            server = Server(kind, f"http://127.0.0.1:{port}", proc, log_path, tls=False)
            wait_tcp(server, port)
        elif kind == "floor":
            # Bare tonic with tonic's own TLS and the full service's
            # certificate; the load generator sends it the same bearer token
            # as the full service (it ignores it, as a server that checks
            # nothing would).
            port = free_port()
            argv = [
                self.bin("bench-bare-server"),
                "--addr",
                f"127.0.0.1:{port}",
                "--tls-cert",
                str(self.certs / "server.pem"),
                "--tls-key",
                str(self.certs / "server.key"),
            ]
            proc, log_path = self._spawn(kind, argv, clean_env())
            server = Server(kind, f"https://127.0.0.1:{port}", proc, log_path, tls=True)
            wait_tcp(server, port)
        elif kind == "full" or kind.startswith("full:"):
            binary = self.bin("orders-server")
            env = dict(VARIANTS.get(kind[5:], {}))
            if kind[5:] in self.also:
                binary = str(self.also[kind[5:]])
            env.update(extra_env or {})
            port, admin = free_port(), free_port()
            proc, log_path = self._spawn(
                kind.replace(":", "-"), [binary], self.full_env(port, admin, env)
            )
            server = Server(kind, f"https://127.0.0.1:{port}", proc, log_path, tls=True, admin=admin)
            wait_serving(server, admin)
        elif kind == "python":
            port = free_port()
            argv = [
                sys.executable,
                str(REPO / "bench" / "python" / "server.py"),
                "--port",
                str(port),
                "--cert",
                str(self.certs / "server.pem"),
                "--key",
                str(self.certs / "server.key"),
                "--jwks",
                str(self.certs / "jwks.json"),
                "--issuer",
                ISSUER,
                "--audience",
                AUDIENCE,
            ]
            proc, log_path = self._spawn(kind, argv, clean_env())
            server = Server(kind, f"https://127.0.0.1:{port}", proc, log_path, tls=True)
            wait_tcp(server, port)
        else:
            raise ValueError(kind)
        return server

    # --- the load generator ------------------------------------------------------

    def load(self, server: Server, call: str, *extra: str, timeout: float = 300) -> dict:
        argv = self.load_argv(server, call, *extra)
        before = cores_busy()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=clean_env())
        after = cores_busy()
        if done.returncode != 0:
            raise Failure(
                f"orders-load --call {call} against {server.kind} failed: {done.stderr.strip()}\n"
                f"server output (last lines): {tail(server.output())}"
            )
        report = json.loads(done.stdout)
        report["cores_busy_percent"] = busy_percent(before, after)
        return report

    def load_argv(self, server: Server, call: str, *extra: str) -> list[str]:
        """orders-load against `server`, on the load generator's core, with the token."""
        argv = [
            "taskset",
            "-c",
            LOAD_CORE,
            self.bin("orders-load"),
            "--endpoint",
            server.endpoint,
            "--token-file",
            str(self.token_file),
            "--call",
            call,
            "--server-pid",
            str(server.pid),
            "--threads",
            "1",
            "--json",
            "--quiet",
            *extra,
        ]
        if server.tls:
            argv += ["--ca-cert", str(self.certs / "ca.pem"), "--tls-domain", "localhost"]
        return argv

    def closed(self, server: Server, call: str, concurrency: int, duration: float | None = None) -> dict:
        p = self.plan
        return self.load(
            server,
            call,
            "--connections",
            str(p.connections),
            "--concurrency",
            str(concurrency),
            "--warmup",
            f"{p.warmup}s",
            "--duration",
            f"{p.duration if duration is None else duration}s",
        )

    # --- measurements ------------------------------------------------------------

    def measure(self, name: str, fn, store: bool = True):
        """Runs one measurement; a failure is recorded and the run goes on.
        Returns the result (None when it failed)."""
        log(f"{name} ...")
        started = time.monotonic()
        result = None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - recorded, reported, fails the run at the end
            message = str(e) if isinstance(e, Failure) else traceback.format_exc()
            log(f"{name} FAILED: {message}")
            self.failures.append((name, message))
            if store:
                self.results[name] = {"error": message.splitlines()[0] if message else "failed"}
        else:
            if store:
                self.results[name] = result
        log(f"{name} done in {time.monotonic() - started:.1f} s")
        return result

    def with_server(self, kind: str, fn, extra_env: dict | None = None):
        server = self.start(kind, extra_env)
        try:
            result = fn(server)
        finally:
            output = server.stop()
        if isinstance(result, dict):
            result["server_exit"] = server.proc.returncode
            if server.kind in ("bare", "floor"):
                result["bare_handled"] = parse_bare_handled(output)
        return result

    def get_rounds(self) -> None:
        """GetOrder at the top rate, `plan.rounds` rounds per server,
        interleaved: floor, full (and each --also build), plaintext, floor,
        full, ... A drift of the shared machine (another job starting or
        ending) then falls on every server alike rather than on whichever
        ran in its path. Each round is a fresh server; its CPU time
        per call is what orders-load read from `/proc/PID/stat` at the
        start and end of the measured window, divided by the calls answered
        in it. Results: `get_<kind>` with the medians and every round."""
        p = self.plan
        kinds = ["floor", "full", *(f"full:{label}" for label in [*VARIANTS, *self.also]), "bare"]
        rounds: dict[str, list] = {k: [] for k in kinds}
        for r in range(p.rounds):
            for kind in kinds:
                report = self.measure(
                    f"get_{kind} round {r + 1} of {p.rounds}",
                    lambda k=kind: self.with_server(
                        k, lambda s: self.closed(s, "get", p.concurrency, p.round_duration)
                    ),
                    store=False,
                )
                if report is not None:
                    report["round"] = r + 1
                    rounds[kind].append(report)
        for kind in kinds:
            if rounds[kind]:
                self.results[f"get_{kind}"] = median_of_rounds(rounds[kind])
            else:
                self.results[f"get_{kind}"] = {"error": "every round failed"}

    def run_all(self) -> None:
        p = self.plan
        self.measure("startup", self.startup)
        for kind in ("floor", "full", "python"):
            self.measure(f"idle_{kind}", lambda k=kind: self.with_server(k, self.idle))
        self.get_rounds()
        self.measure(
            "get_python",
            lambda: self.with_server("python", lambda s: self.closed(s, "get", p.concurrency)),
        )
        self.measure(
            "get_full_nocache",
            lambda: self.with_server(
                "full",
                lambda s: self.closed(s, "get", p.concurrency),
                {"ORDERS__AUTH__TOKEN_CACHE_SIZE": "0"},
            ),
        )
        floor_top = self.results.get("get_floor", {}).get("rps")
        if floor_top:
            rate = max(1, round(floor_top / 2))
            for kind in ("floor", "full"):
                self.measure(
                    f"get_open_{kind}",
                    lambda k=kind: self.with_server(k, lambda s: self.open_loop(s, rate)),
                )
        for kind in ("floor", "full", "python"):
            self.measure(
                f"register_{kind}",
                lambda k=kind: self.with_server(
                    k, lambda s: self.closed(s, "register", p.register_concurrency)
                ),
            )
        one_tx = {"ORDERS__DATABASE__GROUP_COMMIT": "false"}
        refused = self.config_refuses(one_tx)
        if refused:
            # The key is part of the service: a refusal means the harness rotted.
            raise SystemExit(f"bench/compare: orders-server refuses database.group_commit=false: {refused}")
        self.measure(
            "register_full_one_tx",
            lambda: self.with_server(
                "full",
                lambda s: self.closed(s, "register", p.register_concurrency),
                one_tx,
            ),
        )
        for kind in ("floor", "full", "python"):
            self.measure(f"watch_{kind}", lambda k=kind: self.with_server(k, self.fanout))
        if shutil.which("h2load"):
            for kind in ("floor", "full"):
                self.measure(f"h2load_{kind}", lambda k=kind: self.with_server(k, self.h2load))
        else:
            self.notes.append("h2load is not installed: its checks were skipped.")
        self.measure("auth", self.auth_cost)

    def run_breakdown(self, out: Path, smoke: bool) -> dict:
        """bench/breakdown's profile of the floor and the full service, by
        breakdown.py's own code, with these binaries and this work folder,
        after the measurements above (so its load does not fall on theirs).
        Writes breakdown.md and breakdown.json into `out`; returns what
        latest.json and latest.md keep of it: each server's CPU per call by
        component. Where perf cannot profile, a skip and the reason: the
        figures above do not need it."""
        breakdown = import_breakdown()
        unusable = breakdown.perf_unusable(self.work)
        if unusable:
            log(f"breakdown skipped: {unusable}")
            return {"status": "skipped", "reason": unusable}
        seconds, warmup = breakdown.windows(smoke, breakdown.SECONDS)
        loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        started = time.monotonic()
        results = breakdown.profile_servers(self, seconds, warmup, self.work)
        command = "bench/compare" + (" --smoke" if smoke else "")
        meta = breakdown.make_meta(command, self.args.profile, seconds, loadavg)
        breakdown.write(out, results, meta)
        keep = ("kind", "calls_per_s", "cpu_us_per_call", "server_cpu_percent", "client_cpu_percent", "samples", "components")
        return {
            "status": "made",
            "elapsed_s": round(time.monotonic() - started, 1),
            "meta": meta,
            **{kind: {k: r.get(k) for k in keep} for kind, r in results.items()},
        }

    def startup(self) -> dict:
        port, admin = free_port(), free_port()
        env = self.full_env(port, admin)
        argv = [
            "taskset",
            "-c",
            LOAD_CORE,
            self.bin("orders-load"),
            "startup",
            "--health",
            f"http://127.0.0.1:{admin}",
            "--service",
            "readiness",
            "--repeat",
            str(self.plan.startups),
            "--settle",
            "1s",
            "--json",
            "--",
            "taskset",
            "-c",
            SERVER_CORE,
            self.bin("orders-server"),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
        if done.returncode != 0:
            raise Failure(f"orders-load startup failed: {done.stderr.strip()}")
        result = json.loads(done.stdout)
        # The results are committed: a binary is named by its file name, not
        # by where this machine happened to build it.
        result["command"] = [Path(arg).name if os.path.isabs(arg) else arg for arg in result.get("command", [])]
        return result

    def idle(self, server: Server) -> dict:
        time.sleep(1.0)
        return {"rss_kib": rss_kib(server.pid)}

    def open_loop(self, server: Server, rate: int) -> dict:
        p = self.plan
        return self.load(
            server,
            "get",
            "--connections",
            str(p.connections),
            "--concurrency",
            str(p.open_concurrency),
            "--rate",
            str(rate),
            "--warmup",
            f"{p.warmup}s",
            "--duration",
            f"{p.duration}s",
        )

    def fanout(self, server: Server) -> dict:
        p = self.plan
        return self.load(
            server,
            "watch",
            "--watchers",
            str(p.watchers),
            "--watch-orders",
            str(p.watch_orders),
            "--event-rate",
            str(p.event_rate),
            "--warmup",
            f"{p.warmup}s",
            "--duration",
            f"{p.watch_duration}s",
        )

    def h2load(self, server: Server) -> dict:
        p = self.plan
        # One order to read, registered through the load generator.
        setup = self.load(server, "get", "--requests", "1", "--warmup", "0s", "--concurrency", "1")
        order_id = setup["orders"][0]
        body = self.work / "get-order.bin"
        body.write_bytes(grpc_frame(get_order_request(order_id)))
        before = self.handled(server)
        argv = [
            "taskset",
            "-c",
            LOAD_CORE,
            "h2load",
            "-t",
            "1",
            "-c",
            str(p.h2load_clients),
            "-m",
            str(p.h2load_streams),
            # h2load takes integer durations: milliseconds.
            "-D",
            f"{round(p.h2load_duration * 1000)}ms",
            "--warm-up-time",
            f"{round(p.warmup * 1000)}ms",
            "-d",
            str(body),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            f"authorization: Bearer {self.token}",
            f"{server.endpoint}/orders.v1.OrderService/GetOrder",
        ]
        cpu = cores_busy()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        cpu_after = cores_busy()
        if done.returncode != 0:
            raise Failure(f"h2load failed: {done.stdout[-500:]} {done.stderr[-500:]}")
        result = parse_h2load(done.stdout)
        result["cores_busy_percent"] = busy_percent(cpu, cpu_after)
        after = self.handled(server)
        if after is not None and before is not None:
            diff = {code: after.get(code, 0) - before.get(code, 0) for code in after}
            result["grpc_codes"] = {c: n for c, n in diff.items() if n}
        return result

    def handled(self, server: Server) -> dict | None:
        """GetOrder calls the full service answered, by gRPC code (its /metrics)."""
        if server.admin is None:
            return None
        with urllib.request.urlopen(f"http://127.0.0.1:{server.admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        codes: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{") and 'grpc_method="GetOrder"' in line:
                code = re.search(r'grpc_code="([^"]+)"', line).group(1)
                codes[code] = codes.get(code, 0) + float(line.rsplit(" ", 1)[1])
        return codes

    def config_refuses(self, extra: dict) -> str | None:
        """The reason `orders-server check-config` refuses these settings, or None."""
        env = self.full_env(free_port(), free_port(), extra)
        done = subprocess.run(
            [self.bin("orders-server"), "check-config"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        return None if done.returncode == 0 else done.stderr.strip()

    def auth_cost(self) -> dict:
        done = subprocess.run(
            ["taskset", "-c", SERVER_CORE, self.bin("bench-auth-cost"), "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise Failure(f"bench-auth-cost failed: {done.stderr.strip()}")
        return json.loads(done.stdout)


# --- helpers -----------------------------------------------------------------------


def run(argv, **kwargs) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise Failure(f"{' '.join(map(str, argv))} failed: {done.stderr.strip()}")
    return done.stdout


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_tcp(server: Server, port: int, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise Failure(f"the {server.kind} server exited: {tail(server.output())}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise Failure(f"the {server.kind} server did not listen within {limit} s")


def wait_serving(server: Server, admin: int, limit: float = 60) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + limit
    with grpc.insecure_channel(f"127.0.0.1:{admin}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise Failure(f"the {server.kind} server exited: {tail(server.output())}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    server.stop()
    raise Failure(f"the {server.kind} server was not SERVING within {limit} s")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def get_order_request(order_id: str) -> bytes:
    """GetOrderRequest{order_id} in protobuf: field 1, length-delimited."""
    raw = order_id.encode()
    return b"\x0a" + varint(len(raw)) + raw


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def parse_h2load(text: str) -> dict:
    out: dict = {}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    if m:
        out["rps"] = float(m.group(3))
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        text,
    )
    if m:
        keys = ["total", "started", "done", "succeeded", "failed", "errored", "timeout"]
        out["requests"] = dict(zip(keys, map(int, m.groups())))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["http_status"] = dict(zip(["2xx", "3xx", "4xx", "5xx"], map(int, m.groups())))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        out["request_time_us"] = {
            "min": to_us(m.group(1)),
            "max": to_us(m.group(2)),
            "mean": to_us(m.group(3)),
            "sd": to_us(m.group(4)),
        }
    if "rps" not in out:
        raise Failure(f"cannot read h2load's output: {text[-800:]}")
    return out


def to_us(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]


def parse_bare_handled(output: str) -> dict | None:
    m = re.search(r"handled: OK=(\d+) NotFound=(\d+) other=(\d+)", output)
    return dict(zip(["OK", "NotFound", "other"], map(int, m.groups()))) if m else None


LATENCY_KEYS = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")


def median_of_rounds(reports: list[dict]) -> dict:
    """One report for a server's GetOrder rounds: the round of median
    throughput, with its calls/s, server CPU per call, CPU shares and latency
    percentiles replaced by their medians over the rounds (each taken on its
    own), and every round's figures under `rounds`."""
    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    ordered = sorted(reports, key=lambda r: r.get("rps") or 0)
    out = copy.deepcopy(ordered[(len(ordered) - 1) // 2])
    out["rps"] = med(r.get("rps") for r in reports)
    out["client_cpu_percent"] = med(r.get("client_cpu_percent") for r in reports)
    server = out.get("server") or {}
    for key in ("cpu_us_per_call", "cpu_percent", "cpu_seconds"):
        server[key] = med(get(r, "server", key) for r in reports)
    out["latency"] = {
        **(out.get("latency") or {}),
        **{q: med(get(r, "latency", q) for r in reports) for q in ("mean_us", *LATENCY_KEYS)},
    }
    out["median_of"] = len(reports)
    out["rounds"] = [
        {
            "rps": r.get("rps"),
            "requests": r.get("requests"),
            "cpu_seconds": get(r, "server", "cpu_seconds"),
            "cpu_us_per_call": get(r, "server", "cpu_us_per_call"),
            "server_cpu_percent": get(r, "server", "cpu_percent"),
            "client_cpu_percent": r.get("client_cpu_percent"),
            "cores_busy_percent": r.get("cores_busy_percent"),
            "p50_us": get(r, "latency", "p50_us"),
            "p99_us": get(r, "latency", "p99_us"),
            "errors": r.get("errors"),
            "round": r.get("round"),
        }
        for r in reports
    ]
    return out


def paired_cpu_ratio(res: dict, a: str, b: str) -> float | None:
    """The median over the GetOrder rounds of `a`'s server CPU per call over
    `b`'s in the same round. Two servers measured one after the other share
    the machine's state of the moment (other tenants, clock speed), which
    can move both by a third between rounds; the ratio within a round
    cancels that, where a ratio of the two medians does not."""
    def by_round(kind):
        return {r["round"]: r["cpu_us_per_call"] for r in get(res, f"get_{kind}", "rounds") or []
                if r.get("round") is not None and r.get("cpu_us_per_call")}
    ra, rb = by_round(a), by_round(b)
    ratios = [ra[n] / rb[n] for n in ra if n in rb]
    return statistics.median(ratios) if ratios else None


# --- report ------------------------------------------------------------------------


def get(results: dict, *path, default=None):
    value = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def fmt_rate(v) -> str:
    return "—" if v is None else f"{v:,.0f}"


def fmt_ms(us) -> str:
    if us is None:
        return "—"
    ms = us / 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def fmt_us(us) -> str:
    return "—" if us is None else f"{us:.1f}" if us < 100 else f"{us:,.0f}"


def fmt_mib(kib) -> str:
    return "—" if kib is None else f"{kib / 1024:.1f}"


def ratio(a, b, digits: int = 2) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.{digits}f}×"


def error_text(r: dict | None) -> str:
    if not r:
        return ""
    if "error" in r:
        return "failed: " + r["error"][:120]
    errors = r.get("errors") or {}
    return ", ".join(f"{k} {v}" for k, v in errors.items())


def compute_targets(res: dict) -> list[dict]:
    """The performance targets, each a row with the measured figure and
    whether it is met, then the guards: figures the targets do not cover,
    kept from getting worse. Ratios are within this one run, a benchmark:
    they never fail it. Each row's `kind` is "target" or "guard"."""
    rows = []

    def row(kind, name, measured, value, ok):
        rows.append(
            {"kind": kind, "target": name, "measured": measured, "value": value, "met": None if value is None else ok}
        )

    def target(name, measured, value, ok):
        row("target", name, measured, value, ok)

    def guard(name, measured, value, ok):
        row("guard", name, measured, value, ok)

    floor = get(res, "get_floor", "rps")
    full = get(res, "get_full", "rps")
    py = get(res, "get_python", "rps")
    # Two generators, and the lower ratio counts: a generator that runs out
    # of CPU before the floor does understates the floor, which flatters
    # the ratio (see the bottleneck check in the details).
    ratios = {}
    if full and floor:
        ratios["orders-load"] = full / floor
    h_full, h_floor = get(res, "h2load_full", "rps"), get(res, "h2load_floor", "rps")
    if h_full and h_floor:
        ratios["h2load"] = h_full / h_floor
    v = min(ratios.values()) if ratios else None
    target(
        "full GetOrder calls/s ≥ 0.80× the floor's (bare tonic, TLS, the same token)",
        ", ".join(f"{r:.2f}× ({name})" for name, r in ratios.items()) or "—",
        v,
        v is not None and v >= 0.80,
    )
    # The same target seen from the server's side: a server bound by its one
    # core answers 1 / (CPU per call) calls a second, so 0.80× the floor's
    # rate is 1.25× its CPU per call, a ratio that other jobs on the machine
    # cannot skew.
    c_full = get(res, "get_full", "server", "cpu_us_per_call")
    c_floor = get(res, "get_floor", "server", "cpu_us_per_call")
    v = paired_cpu_ratio(res, "full", "floor")
    target(
        "full GetOrder server CPU per call ≤ 1.25× the floor's (median of the rounds' ratios)",
        f"{v:.2f}× (medians {fmt_us(c_full)} vs {fmt_us(c_floor)} µs)" if v else "—",
        v,
        v is not None and v <= 1.25,
    )

    reg_full = get(res, "register_full", "rps")
    v = reg_full / full if reg_full and full else None
    target(
        "durable RegisterOrder calls/s ≥ 0.50× the full service's GetOrder",
        f"{v:.2f}× ({fmt_rate(reg_full)} vs {fmt_rate(full)})" if v else "—",
        v,
        v is not None and v >= 0.50,
    )

    v = full / py if full and py else None
    target(
        "full GetOrder calls/s ≥ 30× Python grpc.aio's (TLS, PyJWT)",
        f"{v:.1f}× ({fmt_rate(full)} vs {fmt_rate(py)})" if v else "—",
        v,
        v is not None and v >= 30,
    )

    p99_floor = get(res, "get_open_floor", "latency", "p99_us")
    p99_full = get(res, "get_open_full", "latency", "p99_us")
    v = p99_full / p99_floor if p99_full and p99_floor else None
    target(
        "GetOrder p99 at half of the floor's top rate (open loop) ≤ 1.5× the floor's",
        f"{v:.2f}× ({fmt_ms(p99_full)} vs {fmt_ms(p99_floor)} ms)" if v else "—",
        v,
        v is not None and v <= 1.5,
    )

    # orders-load times a delivery from the moment it sends the UpdateOrder,
    # so the durable write of the change is inside the figure.
    watchers = get(res, "watch_full", "watch", "watchers") or 0
    p50 = get(res, "watch_full", "watch", "delivery_latency", "p50_us")
    v = p50 / 1000 if p50 is not None else None
    target(
        f"event delivery p50 to {watchers:,} watchers ≤ 2 ms (from the update's send, its durable write included)",
        f"{fmt_ms(p50)} ms" if v is not None else "—",
        v,
        v is not None and v <= 2.0,
    )

    idle = idle_rss(res, "full")
    v = idle / 1024 if idle else None
    target("idle resident memory ≤ 20 MiB", f"{v:.1f} MiB" if v else "—", v, v is not None and v <= 20)
    rss = watch_rss(res, "full")
    v = rss / 1024 if rss else None
    target(
        f"resident memory with {watchers:,} WatchOrder streams ≤ 80 MiB",
        f"{v:.1f} MiB" if v else "—",
        v,
        v is not None and v <= 80,
    )

    v = get(res, "startup", "median_ms")
    guard("start to SERVING ≤ 200 ms", f"{v:.0f} ms" if v is not None else "—", v, v is not None and v <= 200)

    hit = get(res, "auth", "cache_hit_us")
    v = hit / c_full if hit and c_full else None
    guard(
        "authentication (token cache hit) ≤ 2% of a call's CPU time",
        f"{v:.2%} ({hit:.2f} µs of {c_full:.0f} µs)" if v is not None else "—",
        v,
        v is not None and v <= 0.02,
    )

    # Serving gRPC-Web and Connect beside gRPC must not tax a gRPC call: the
    # layers that translate them only look at its content type. Both servers
    # ran in the same interleaved rounds; the tolerance is the rounds' noise.
    off = get(res, "get_full:grpc-only", "server", "cpu_us_per_call")
    v = paired_cpu_ratio(res, "full", "full:grpc-only")
    guard(
        "gRPC GetOrder CPU per call with gRPC-Web and Connect served ≤ 1.05× with them off (median of the rounds' ratios)",
        f"{v:.3f}× (medians {fmt_us(c_full)} vs {fmt_us(off)} µs)" if v is not None else "—",
        v,
        v is not None and v <= 1.05,
    )
    return rows


def idle_rss(res: dict, kind: str):
    """A server's idle resident memory, KiB; the full service's from its start-up runs when made."""
    if kind == "full":
        return get(res, "startup", "median_idle_rss_kib") or get(res, "idle_full", "rss_kib")
    return get(res, f"idle_{kind}", "rss_kib")


def watch_rss(res: dict, kind: str):
    """A server's resident memory with the watchers' streams open, KiB."""
    return max(
        (x for x in (get(res, f"watch_{kind}", "watch", "server_rss_kib_open"), get(res, f"watch_{kind}", "server", "rss_kib_max")) if x),
        default=None,
    )


def readme_summary(res: dict, meta: dict, targets: list[dict]) -> str:
    """The README's short table: the headline figures of a full run, where
    it ran, and how many of its targets and guards it met. Every figure,
    ratio, target and guard, and the breakdown's table, are in latest.md,
    which the README links to, so the README stays short."""
    L: list[str] = []
    add = L.append
    cpu = meta["machine"].split(", Linux")[0]
    add(f"From the latest full run of `bench/compare` (commit `{meta['commit']}`, {cpu}; each server "
        "on one core, the load generator on the other):")
    add("")
    add("| measure | floor: bare tonic with TLS | full service | Python grpc.aio |")
    add("|---|---:|---:|---:|")
    kinds = ("floor", "full", "python")
    gb, gf, gp = (get(res, f"get_{k}", "rps") for k in kinds)
    add(f"| GetOrder, calls/s | {fmt_rate(gb)} | {fmt_rate(gf)} | {fmt_rate(gp)} |")
    b, f, p = (get(res, f"get_{k}", "latency", "p99_us") for k in kinds)
    add(f"| GetOrder p99 latency at top rate, ms | {fmt_ms(b)} | {fmt_ms(f)} | {fmt_ms(p)} |")
    rb, rf, rp = (get(res, f"register_{k}", "rps") for k in kinds)
    add(f"| RegisterOrder, calls/s (full: durable; others: in memory) | {fmt_rate(rb)} | {fmt_rate(rf)} | {fmt_rate(rp)} |")
    ib, i_f, ip = (idle_rss(res, k) for k in kinds)
    add(f"| idle resident memory, MiB | {fmt_mib(ib)} | {fmt_mib(i_f)} | {fmt_mib(ip)} |")
    watchers = get(res, "watch_full", "watch", "watchers") or meta["plan"]["watchers"]
    wb, wf, wp = (watch_rss(res, k) for k in kinds)
    add(f"| resident memory with {watchers:,} WatchOrder streams, MiB | {fmt_mib(wb)} | {fmt_mib(wf)} | {fmt_mib(wp)} |")
    st = get(res, "startup", "median_ms")
    add(f"| start to SERVING, ms | — | {'—' if st is None else f'{st:.0f}'} | — |")
    add("")
    def tally(kind):
        judged = [t for t in targets if t.get("kind", "target") == kind and t["met"] is not None]
        return sum(1 for t in judged if t["met"]), len(judged)

    met, judged = tally("target")
    g_met, g_judged = tally("guard")
    add(f"The run met {met} of its {judged} performance targets, and {g_met} of its {g_judged} guards.")
    return "\n".join(L)


def markdown(res: dict, meta: dict, targets: list[dict], notes: list[str], breakdown: dict | None = None) -> tuple[str, str]:
    """The summary (figures, ratios, targets, the breakdown) and the details,
    for latest.md."""
    L: list[str] = []
    add = L.append
    plan = meta["plan"]
    add(f"Made by `{meta['command']}` on {meta['date']} (commit `{meta['commit']}`, {meta['mode']} mode, "
        f"{meta['elapsed_s']:.0f} s, cargo profile `{meta.get('profile', 'release')}`). Machine: {meta['machine']}. "
        f"Server on core {SERVER_CORE}, load generator on core {LOAD_CORE} (`taskset`); load average before "
        f"the run: {meta['loadavg']}{'; after: ' + meta['loadavg_after'] if meta.get('loadavg_after') else ''} "
        "(the run itself keeps about two cores busy; more than that was other jobs).")
    add("")

    rounds = plan.get("rounds")
    round_s = plan.get("round_duration")
    add("| measure | floor: bare tonic, TLS, the same token | full service | Python grpc.aio | full / floor | full / Python |")
    add("|---|---:|---:|---:|---:|---:|")
    gb, gf, gp = (get(res, f"get_{k}", "rps") for k in ("floor", "full", "python"))
    how = f"; median of {rounds} interleaved rounds of {round_s:g} s" if rounds else ""
    add(f"| **GetOrder, calls/s** (closed loop, {plan['concurrency']} in flight{how}) | {fmt_rate(gb)} | {fmt_rate(gf)} | {fmt_rate(gp)} | **{ratio(gf, gb)}** | {ratio(gf, gp, 1)} |")
    cb, cf, cp = (get(res, f"get_{k}", "server", "cpu_us_per_call") for k in ("floor", "full", "python"))
    add(f"| **server CPU per GetOrder, µs** (`/proc/PID/stat`; median of the rounds) | {fmt_us(cb)} | {fmt_us(cf)} | {fmt_us(cp)} | **{ratio(cf, cb)}** | {ratio(cf, cp)} |")
    for q, label in (("p50_us", "p50"), ("p99_us", "p99")):
        b, f, p = (get(res, f"get_{k}", "latency", q) for k in ("floor", "full", "python"))
        add(f"| GetOrder {label} latency at top rate, ms | {fmt_ms(b)} | {fmt_ms(f)} | {fmt_ms(p)} | {ratio(f, b)} | {ratio(f, p)} |")
    pr, pc = get(res, "get_bare", "rps"), get(res, "get_bare", "server", "cpu_us_per_call")
    if pr:
        add(f"| reference: bare tonic in plaintext (the same rounds), GetOrder calls/s; CPU per call, µs | "
            f"{fmt_rate(pr)}; {fmt_us(pc)} | {fmt_rate(gf)}; {fmt_us(cf)} | — | {ratio(gf, pr)}; {ratio(cf, pc)} | — |")
    for key in sorted(k for k in res if k.startswith("get_full:")):
        ar, ac = get(res, key, "rps"), get(res, key, "server", "cpu_us_per_call")
        what = VARIANT_ROWS.get(key[9:], f"the full service built as `{key[9:]}`")
        paired = paired_cpu_ratio(res, key[4:], "full")
        add(f"| {what} (the same rounds), GetOrder calls/s; CPU per call, µs | — | "
            f"{fmt_rate(ar)}; {fmt_us(ac)} | — | {ratio(ar, gb)}; {ratio(ac, cb)} | — |")
        if paired:
            add(f"| the full service's CPU per GetOrder over `{key[9:]}`'s, median of the rounds' ratios | — | "
                f"{1 / paired:.3f}× | — | — | — |")
    shares = [r.get("server_cpu_percent") for k in ("get_floor", "get_full") for r in get(res, k, "rounds") or []]
    shares = [x for x in shares if x is not None]
    if shares and statistics.median(shares) < 90:
        add(f"| *a noisy run: in the GetOrder rounds the server had a median {statistics.median(shares):.0f}% of its "
            "core, other jobs the rest, so calls/s measure the share it got; read CPU per call* | | | | | |")
    rate = get(res, "get_open_floor", "rate")
    if rate:
        for q, label in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")):
            b, f = (get(res, f"get_open_{k}", "latency", q) for k in ("floor", "full"))
            add(f"| GetOrder {label} at {rate:,.0f}/s (half of the floor's top; open loop), ms | {fmt_ms(b)} | {fmt_ms(f)} | — | {ratio(f, b)} | — |")
    rb, rf, rp = (get(res, f"register_{k}", "rps") for k in ("floor", "full", "python"))
    add(f"| RegisterOrder, calls/s (full: durable, group commit; others: memory) | {fmt_rate(rb)} | {fmt_rate(rf)} | {fmt_rate(rp)} | {ratio(rf, rb)} | {ratio(rf, rp, 1)} |")
    one = get(res, "register_full_one_tx", "rps")
    add(f"| RegisterOrder, calls/s, one transaction per call (durable) | — | {fmt_rate(one)} | — | — | — |")
    for q, label in (("p50_us", "p50"), ("p99_us", "p99")):
        b, f, p = (get(res, f"register_{k}", "latency", q) for k in ("floor", "full", "python"))
        add(f"| RegisterOrder {label} latency, ms | {fmt_ms(b)} | {fmt_ms(f)} | {fmt_ms(p)} | {ratio(f, b)} | {ratio(f, p)} |")
    ib = get(res, "idle_floor", "rss_kib")
    i_f = get(res, "startup", "median_idle_rss_kib") or get(res, "idle_full", "rss_kib")
    ip = get(res, "idle_python", "rss_kib")
    add(f"| idle resident memory, MiB | {fmt_mib(ib)} | {fmt_mib(i_f)} | {fmt_mib(ip)} | {ratio(i_f, ib)} | {ratio(i_f, ip)} |")
    watchers = get(res, "watch_full", "watch", "watchers") or plan["watchers"]

    wb, wf, wp = (watch_rss(res, k) for k in ("floor", "full", "python"))
    add(f"| resident memory with {watchers:,} WatchOrder streams, MiB | {fmt_mib(wb)} | {fmt_mib(wf)} | {fmt_mib(wp)} | {ratio(wf, wb)} | {ratio(wf, wp)} |")
    for q, label in (("p50_us", "p50"), ("p99_us", "p99")):
        b, f, p = (get(res, f"watch_{k}", "watch", "delivery_latency", q) for k in ("floor", "full", "python"))
        add(f"| event delivery {label} to {watchers:,} watchers, ms | {fmt_ms(b)} | {fmt_ms(f)} | {fmt_ms(p)} | {ratio(f, b)} | {ratio(f, p)} |")
    st = get(res, "startup", "median_ms")
    add(f"| start to SERVING (median of {plan['startups']}), ms | — | {'—' if st is None else f'{st:.0f}'} | — | — | — |")
    hb, hf = get(res, "h2load_floor", "rps"), get(res, "h2load_full", "rps")
    add(f"| GetOrder with h2load, calls/s | {fmt_rate(hb)} | {fmt_rate(hf)} | — | {ratio(hf, hb)} | — |")
    add("")

    add("### Targets")
    add("")
    add("Each ratio is within this run. The guards are figures the targets do not cover, kept from "
        "getting worse.")
    add("")
    add("| target | measured | met |")
    add("|---|---|---|")
    for t in targets:
        met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
        name = f"guard: {t['target']}" if t.get("kind") == "guard" else t["target"]
        add(f"| {name} | {t['measured']} | {met} |")
    add("")
    if breakdown:
        L.extend(breakdown_section(breakdown))
        add("")

    summary = "\n".join(L)
    L.clear()
    add("### Details")
    add("")
    add("Load runs (`orders-load`; latencies of successful calls; CPU as a share of one core; "
        "`cores busy` is what `/proc/stat` saw on cores 0 and 1 during the run, so anything "
        "beyond the server's and the generator's own CPU was another process):")
    add("")
    add("| run | calls/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | server CPU | generator CPU | cores busy |")
    add("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for name in sorted(k for k in res if k.startswith(("get_", "register_", "watch_"))):
        r = res[name]
        lat = r.get("latency") or {}
        if name.startswith("watch_"):
            lat = get(r, "watch", "delivery_latency") or {}
        add(
            f"| {name} | {fmt_rate(r.get('rps'))} | {fmt_ms(lat.get('p50_us'))} | {fmt_ms(lat.get('p90_us'))} | "
            f"{fmt_ms(lat.get('p99_us'))} | {fmt_ms(lat.get('p999_us'))} | {fmt_ms(lat.get('max_us'))} | "
            f"{error_text(r)} | {pct(get(r, 'server', 'cpu_percent'))} | {pct(r.get('client_cpu_percent'))} | "
            f"{'/'.join(f'{c:.0f}%' for c in r.get('cores_busy_percent', []))} |"
        )
    add("")
    round_keys = [k for k in res if k.startswith("get_") and get(res, k, "rounds")]
    if round_keys:
        add("GetOrder rounds, in the order they ran (the rows above for these servers are the medians; "
            "CPU per call is the server's utime + stime over the measured window, in 10 ms ticks, divided "
            "by the calls answered in it):")
        add("")
        add("| round | server | calls/s | server CPU per call, µs | server CPU | generator CPU | cores busy | p99 ms |")
        add("|---|---|---:|---:|---:|---:|---|---:|")
        for i in range(max(len(res[k]["rounds"]) for k in round_keys)):
            for key in round_keys:
                rounds_ = res[key]["rounds"]
                if i < len(rounds_):
                    r = rounds_[i]
                    add(f"| {i + 1} | {key[4:]} | {fmt_rate(r.get('rps'))} | {fmt_us(r.get('cpu_us_per_call'))} | "
                        f"{pct(r.get('server_cpu_percent'))} | {pct(r.get('client_cpu_percent'))} | "
                        f"{'/'.join(f'{c:.0f}%' for c in r.get('cores_busy_percent') or [])} | {fmt_ms(r.get('p99_us'))} |")
        spread = []
        for key in round_keys:
            values = [r["rps"] for r in res[key]["rounds"] if r.get("rps")]
            if len(values) > 1:
                spread.append(f"{key[4:]} {min(values):,.0f}–{max(values):,.0f} "
                              f"({(max(values) - min(values)) / statistics.median(values):.0%} of its median)")
        if spread:
            add("")
            add(f"- Spread of the rounds, calls/s: {'; '.join(spread)}.")
        add("")
    for kind in ("floor", "full", "python"):
        w = get(res, f"watch_{kind}", "watch")
        if w:
            add(f"- WatchOrder {kind}: {w['watchers']:,} watchers on {w['orders']} orders over "
                f"{w['connections']} connections, all open in {w['open_ms']:.0f} ms; "
                f"{w['events_sent']} updates, {w['deliveries_received']:,} of {w['deliveries_expected']:,} "
                f"deliveries received{'; stream errors ' + str(w['stream_errors']) if w['stream_errors'] else ''}.")
    for kind in ("floor", "full"):
        o = get(res, f"get_open_{kind}", "open_loop")
        if o:
            add(f"- GetOrder open loop, {kind}: {o['sent']:,} calls sent on schedule; the latest send was "
                f"{fmt_ms(o['max_send_lag_us'])} ms behind it (more than a few ms: the server held "
                f"{plan['open_concurrency']:,} calls in flight, or the generator lacked CPU; latency counts "
                "from the schedule either way).")
    for kind in ("floor", "full"):
        h = res.get(f"h2load_{kind}")
        if h and "error" not in h:
            req = h.get("requests") or {}
            if kind == "floor":
                counted = h.get("bare_handled") or {}
                errors = counted.get("NotFound", 0) + counted.get("other", 0)
                source = f"the bare server's own count over its life: {counted.get('OK', 0):,} OK"
            else:
                codes = h.get("grpc_codes") or {}
                errors = sum(int(n) for c, n in codes.items() if c != "OK")
                source = "the service's `grpc_server_handled_total` during the run: " + ", ".join(
                    f"{c} {int(n):,}" for c, n in sorted(codes.items())
                )
            in_flight = plan["h2load_clients"] * plan["h2load_streams"]
            add(f"- h2load {kind}: {h['rps']:,.0f} calls/s; {req.get('succeeded', 0):,} of {req.get('total', 0):,} "
                f"requests succeeded at the HTTP level; mean {fmt_ms(get(h, 'request_time_us', 'mean'))} ms, "
                f"max {fmt_ms(get(h, 'request_time_us', 'max'))} ms; gRPC codes other than OK: {errors:,} ({source}; "
                f"h2load cannot see `grpc-status`; it cuts off the calls in flight, up to {in_flight}, when its "
                "time is up, which would account for that many Canceled or Unknown).")
    for kind, label in (("floor", "the floor"), ("bare", "bare tonic in plaintext")):
        sc, gc = get(res, f"get_{kind}", "server", "cpu_percent"), get(res, f"get_{kind}", "client_cpu_percent")
        if sc is None or gc is None:
            continue
        verdict = ""
        if gc >= 90 and gc > sc + 5:
            verdict = "; the load generator, not the server, was the limit"
        elif sc >= 90:
            verdict = "; the server was CPU-bound, as it should be"
        hb = get(res, f"h2load_{kind}", "rps")
        h2 = f"; h2load, a lighter generator, got {ratio(hb, gb)} of orders-load's rate" if hb and gb else ""
        add(f"- Bottleneck check, GetOrder on {label} (medians of the rounds): server {sc:.0f}% of its core, "
            f"load generator {gc:.0f}% of its core{verdict}{h2}.")
    starts = get(res, "startup", "starts")
    if starts:
        each = ", ".join(f"{s['ms']:.0f} ms" for s in starts)
        add(f"- Start to SERVING, each start: {each} (the first creates the database; certificates exist).")
    hit, full_check = get(res, "auth", "cache_hit_us"), get(res, "auth", "full_check_us")
    if hit:
        nocache = get(res, "get_full_nocache", "server", "cpu_us_per_call")
        cached = get(res, "get_full", "server", "cpu_us_per_call")
        extra = ""
        if nocache and cached:
            extra = (f"; end to end, the full service spends {nocache:.0f} µs of CPU per GetOrder with the "
                     f"token cache off against {cached:.0f} µs with it ({nocache - cached:.0f} µs more per call, "
                     f"{get(res, 'get_full_nocache', 'rps') or 0:,.0f} calls/s)")
        add(f"- Authentication (`bench-auth-cost`): full ES256 check {full_check:.1f} µs, token cache hit "
            f"{hit:.2f} µs{extra}.")
    for name, message in meta.get("failures", []):
        add(f"- **{name} failed**: {message.splitlines()[0][:300]}")
    for note in notes:
        add(f"- {note}")
    add("")
    return summary, "\n".join(L)


def breakdown_section(b: dict) -> list[str]:
    """latest.md's breakdown: breakdown.py's component table, or why there is none."""
    L = ["### Where a GetOrder's server CPU goes, by component", ""]
    add = L.append
    reason = (b.get("reason") or "no reason given").rstrip(".")
    if b.get("status") == "failed":
        add(f"The breakdown failed: {reason} (the details below have the rest).")
        return L
    if b.get("status") != "made":
        add(f"The breakdown was skipped: {reason}. `bench/breakdown` makes it on its own where perf can profile.")
        return L
    m = b["meta"]
    add(f"The floor and the full service, {m['seconds']:g} s each under GetOrder load (closed loop, "
        f"{FULL.connections} connections, {FULL.concurrency} in flight), sampled by `perf record -e cpu-clock` after the measurements "
        "above: each sample is charged to the function it was in, and each component's share of the "
        "samples to the server's CPU per call (`/proc/PID/stat`) over that window. perf costs the "
        "servers a little and its own work shares the load generator's core, so the servers are kept "
        "less busy and the totals run above the CPU per call of the rounds: read the split and the "
        "differences. With fat LTO, "
        "code inlined into another crate's function counts for that crate. `bench/breakdown` makes "
        "the same table on its own; symbols and sampling figures: [`breakdown.md`](breakdown.md).")
    add("")
    breakdown = import_breakdown()
    L.extend(breakdown.component_table(b["floor"], b["full"]))
    add("")
    shares = [b[k].get("server_cpu_percent") for k in ("floor", "full")]
    if all(x is not None for x in shares):
        add(f"The servers had {shares[0]:.0f}% (floor) and {shares[1]:.0f}% (full) of their core while "
            f"profiled; {b['floor']['samples']:,} and {b['full']['samples']:,} samples.")
        add("")
    if b.get("chart_error"):
        add(f"The chart could not be drawn: {b['chart_error']}.")
    else:
        add("Chart: [`breakdown.png`](breakdown.png) (each component on both servers, and full − floor, "
            "largest first).")
    return L


def import_breakdown():
    """bench/breakdown.py as a module. This module is registered as `compare`
    first, the name breakdown.py looks for, so it does not load a second copy
    of this file (whose Failure the measurements here would not catch)."""
    if "breakdown" in sys.modules:
        return sys.modules["breakdown"]
    sys.modules.setdefault("compare", sys.modules[__name__])
    spec = importlib.util.spec_from_file_location("breakdown", REPO / "bench" / "breakdown.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["breakdown"] = module
    spec.loader.exec_module(module)
    return module


def pct(v) -> str:
    return "—" if v is None else f"{v:.0f}%"


def chart(res: dict, path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [("floor", "floor (bare tonic, TLS, token)", "#4c72b0"), ("full", "full service", "#dd8452"), ("python", "Python grpc.aio", "#55a868")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))

    ax = axes[0]
    groups = ["GetOrder", "RegisterOrder", "GetOrder (h2load)"]
    keys = ["get_{}", "register_{}", "h2load_{}"]
    width = 0.26
    for i, (kind, label, color) in enumerate(kinds):
        values = [get(res, k.format(kind), "rps") or 0 for k in keys]
        ax.bar([g + (i - 1) * width for g in range(len(groups))], values, width, label=label, color=color)
    one = get(res, "register_full_one_tx", "rps")
    if one:
        ax.bar([1 + 2 * width], [one], width, label="full, one tx per call", color="#c44e52")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("calls per second")
    ax.set_title("Throughput (closed loop)")
    ax.legend(fontsize=8)

    ax = axes[1]
    series = [("get_{}", "latency", "top"), ("get_open_{}", "latency", "half")]
    labels = [
        f"{q}\n{label}" for _, _, label in series for q in ("p50", "p99", "p99.9")
    ]
    x = range(len(labels))
    for i, (kind, label, color) in enumerate(kinds):
        values = []
        for key, field_, _ in series:
            for q in ("p50_us", "p99_us", "p999_us"):
                v = get(res, key.format(kind), field_, q)
                values.append(v / 1000 if v else 0)
        ax.bar([p + (i - 1) * width for p in x], values, width, label=label, color=color)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("GetOrder latency, ms (log)")
    ax.set_xlabel("top: closed loop at the top rate; half: open loop at half of the floor's top rate", fontsize=8)
    ax.set_title("GetOrder latency")

    ax = axes[2]
    groups = ["idle", f"{meta['plan']['watchers']:,} watchers"]
    for i, (kind, label, color) in enumerate(kinds):
        idle = get(res, "startup", "median_idle_rss_kib") if kind == "full" else None
        idle = idle or get(res, f"idle_{kind}", "rss_kib") or 0
        watch = max(get(res, f"watch_{kind}", "watch", "server_rss_kib_open") or 0, get(res, f"watch_{kind}", "server", "rss_kib_max") or 0)
        ax.bar([g + (i - 1) * width for g in range(2)], [idle / 1024, watch / 1024], width, label=label, color=color)
    ax.axhline(20, color="grey", linestyle=":", linewidth=1)
    ax.axhline(80, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(2), groups)
    ax.set_ylabel("resident memory, MiB")
    ax.set_title("Server memory (targets: 20 / 80 MiB)")

    fig.suptitle(f"bench/compare, {meta['date']}, commit {meta['commit']} ({meta['mode']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(table: str, breakdown_made: bool) -> None:
    text = README.read_text()
    if README_BEGIN not in text or README_END not in text:
        log(f"README.md has no {README_BEGIN} … {README_END} markers: not updated")
        return
    head, rest = text.split(README_BEGIN, 1)
    _, tail_ = rest.split(README_END, 1)
    # The breakdown is linked only when this run made it: otherwise the files
    # there are an older run's.
    where = (
        " Where a GetOrder's server CPU goes, by component, on the floor and on the full service: "
        "[`bench/results/breakdown.md`](bench/results/breakdown.md) (chart: "
        "[`breakdown.png`](bench/results/breakdown.png))."
        if breakdown_made
        else ""
    )
    body = (
        f"{README_BEGIN}\n{table}\nEvery figure, ratio, target and guard, and the CPU of the servers and of the load "
        "generator: [`bench/results/latest.md`](bench/results/latest.md) (chart: "
        f"[`latest.png`](bench/results/latest.png)).{where}\n"
        f"{README_END}"
    )
    README.write_text(head + body + tail_)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} × {model}, Linux {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/compare", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("--smoke", action="store_true", help="the whole pipeline in seconds (CI)")
    parser.add_argument("--profile", default="production", help="cargo profile of the binaries (set by bench/compare)")
    parser.add_argument("--release", action="store_true", help="with --smoke: use the production build")
    parser.add_argument(
        "--only-rounds",
        action="store_true",
        help="only the interleaved GetOrder rounds (floor, full, plaintext); results in a temporary folder unless --out",
    )
    parser.add_argument("--rounds", type=int, help="GetOrder rounds per server (default: 3; --smoke: 2)")
    parser.add_argument("--round-duration", type=float, help="seconds measured per round (default: 6)")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="another orders-server binary to put in the GetOrder rounds (a profile or a change, "
        "measured interleaved against the same floor); repeatable",
    )
    parser.add_argument(
        "--no-breakdown",
        action="store_true",
        help="skip the breakdown (bench/breakdown's profile of the floor and the full service, with perf) "
        "that follows the measurements; --only-rounds skips it too",
    )
    parser.add_argument("--out", type=Path, help="results folder (default: bench/results; --smoke, --only-rounds: a temporary one)")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (certificates, logs, databases)")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: write the report, chart and README table again from a latest.json",
    )
    args = parser.parse_args()

    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        out = args.out or RESULTS
        out.mkdir(parents=True, exist_ok=True)
        meta, results = saved["meta"], saved["results"]
        return write_results(out, meta, results, [], args, notes=saved.get("notes", []), breakdown=saved.get("breakdown"))

    if (os.cpu_count() or 1) < 2:
        log("this machine has one core: server and load generator will share it")
        global LOAD_CORE
        LOAD_CORE = SERVER_CORE
    profile_dir = {"dev": "debug", "test": "debug", "bench": "release"}.get(args.profile, args.profile)
    bin_dir = REPO / "target" / profile_dir
    plan = SMOKE if args.smoke else FULL
    if args.rounds is not None:
        plan = dataclasses.replace(plan, rounds=max(1, args.rounds))
    if args.round_duration is not None:
        plan = dataclasses.replace(plan, round_duration=args.round_duration)
    also = {}
    for spec in args.also:
        label, sep, path = spec.partition("=")
        if not sep or not label or not Path(path).is_file():
            parser.error(f"--also {spec!r}: LABEL=PATH to an orders-server binary")
        also[label] = Path(path).resolve()
    temporary = args.smoke or args.only_rounds
    out = args.out or (Path(tempfile.mkdtemp(prefix="orders-bench-smoke-")) if temporary else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="orders-bench-"))
    started = time.monotonic()
    bench = Bench(args=args, plan=plan, bin_dir=bin_dir, work=work, also=also)
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    breakdown = None
    try:
        bench.prepare()
        if args.only_rounds:
            bench.get_rounds()
        else:
            bench.run_all()
            if args.no_breakdown:
                breakdown = {"status": "skipped", "reason": "`--no-breakdown` was given"}
            else:
                breakdown = bench.measure("breakdown", lambda: bench.run_breakdown(out, args.smoke), store=False)
                if breakdown is None:
                    # A Failure's message, or a traceback's last line.
                    lines = [line for line in bench.failures[-1][1].splitlines() if line.strip()]
                    reason = lines[-1] if lines and lines[0].startswith("Traceback") else (lines or ["failed"])[0]
                    breakdown = {"status": "failed", "reason": reason[:300]}
    finally:
        if args.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    command = "bench/compare" + (" --smoke" if args.smoke else "") + (" --only-rounds" if args.only_rounds else "")
    meta = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + ("+changes" if dirty else ""),
        "mode": "smoke" if args.smoke else "rounds" if args.only_rounds else "full",
        "profile": args.profile,
        "also": {label: path.name for label, path in also.items()},
        "machine": machine(),
        "loadavg": " ".join(loadavg),
        "loadavg_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "elapsed_s": time.monotonic() - started,
        "plan": plan.__dict__,
        "failures": bench.failures,
    }
    return write_results(out, meta, bench.results, bench.failures, args, notes=bench.notes, breakdown=breakdown)


def write_results(
    out: Path, meta: dict, results: dict, failures: list, args, notes: list, breakdown: dict | None = None
) -> int:
    """latest.json, latest.md, latest.png in `out`, and breakdown.png when the
    run made the breakdown (breakdown.md and .json are written when it is
    made); the README's short table after a full run."""
    targets = compute_targets(results)
    if meta["mode"] in ("full", "smoke"):
        # A run reports every target and guard: one left without a figure
        # fails the run as a failed measurement does, so the smoke run in
        # CI notices a row that stopped being measured.
        unmeasured = [r["target"] for r in targets if r["value"] is None]
        if unmeasured:
            message = "not measured: " + "; ".join(unmeasured)
            log(f"targets: {message}")
            failures.append(("targets", message))
    if breakdown and breakdown.get("status") == "made":
        breakdown.pop("chart_error", None)
        try:
            import_breakdown().chart(breakdown["floor"], breakdown["full"], out / "breakdown.png", breakdown["meta"])
        except Exception as e:  # noqa: BLE001 - the figures matter more than the picture
            failures.append(("breakdown chart", traceback.format_exc()))
            breakdown["chart_error"] = f"{type(e).__name__}: {e}"
    summary, details = markdown(results, meta, targets, notes, breakdown)
    table = f"{summary}\n{details}"
    saved = {"meta": meta, "targets": targets, "notes": notes, "results": results}
    if breakdown:
        saved["breakdown"] = breakdown
    (out / "latest.json").write_text(json.dumps(saved, indent=2) + "\n")
    (out / "latest.md").write_text(f"# bench/compare: latest results\n\n{table}")
    try:
        chart(results, out / "latest.png", meta)
    except Exception:  # noqa: BLE001 - the figures matter more than the picture
        failures.append(("chart", traceback.format_exc()))
    if meta["mode"] == "full" and not args.no_readme and out == RESULTS:
        made = bool(breakdown) and breakdown.get("status") == "made"
        update_readme(readme_summary(results, meta, targets), made)
    print(table)
    log(f"results in {out}")
    if failures:
        log(f"{len(failures)} measurement(s) failed: {', '.join(n for n, _ in failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
