"""bench/breakdown: a GetOrder's server CPU, in µs per call, by component, on
the floor (bare tonic with TLS, sent the same bearer token) and on the full
service, under the same closed-loop load. Run it through ``bench/breakdown``,
which installs perf and builds the binaries first; ``bench/compare`` runs it
too, after its own measurements, with its binaries and into its folder.
Writes ``breakdown.md``, ``breakdown.json`` and the chart ``breakdown.png``.

For each server (started fresh, pinned to core 0; the load generator and perf
itself on core 1): ``orders-load`` runs GetOrder as ``bench/compare`` does (4
connections, 64 in flight); when its warm-up ends and its measured window
opens, ``perf record -e cpu-clock -F 4999 -g -p PID`` samples the server for
as long as the window lasts. The server's CPU time over the window, from
``/proc/PID/stat``, divided by the calls answered in it, is the CPU per call;
``perf report --no-children --sort dso,sym`` (each sample charged to the
function it was in, its self time) splits it by component in proportion to
samples.

Symbols map to components by crate and module path (``COMPONENTS`` below):
the first crate named in a symbol that is not Rust's standard library, so
``<tonic::...::Svc<grpc_platform::...> as tower_service::Service>::call`` is
tonic's and ``core::ptr::drop_in_place<h2::...>`` is h2's; C and assembly
symbols by name (``malloc``, ``__memmove_avx_unaligned_erms``, ``sqlite3*``,
ring's ``ring_core_*``). Two limits to read the table with: the build is
the production one (fat LTO), in which code inlined across crates counts for
the function it was inlined into (a middleware layer's ``poll`` may show as
tonic's or hyper's), and a sample costs the server a little CPU of its own
(the interrupt, the stack walk), a percent or two more than without perf.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/compare.py, which runs this breakdown after its own measurements,
# registers itself as `compare` before importing this file: one copy of it,
# so the Failure raised here is the one its measurements catch.
compare = sys.modules.get("compare")
if compare is None:
    spec = importlib.util.spec_from_file_location("compare", REPO / "bench" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = compare  # dataclasses look their module up by name
    spec.loader.exec_module(compare)

FREQUENCY = 4999  # samples a second of CPU: an odd rate, so no timer beats in step with it
SECONDS = 10.0  # profiled per server by default, here and in bench/compare's full run

# (component, patterns): the first whose pattern matches wins. Patterns are
# matched against a symbol's first non-standard-library crate path (with its
# module path, for the platform's layers) or, for symbols with no Rust path,
# against the whole name. Order matters: the platform's auth and layers
# before the platform's other code, the metrics layer before the other layers.
COMPONENTS: list[tuple[str, list[str]]] = [
    ("kernel", [r"^\[kernel\]$"]),
    ("memcpy, memmove, memset, memcmp", [r"^_*(memcpy|memmove|memset|mempcpy|memcmp|bcmp)"]),
    (
        "allocator (malloc/free)",
        [
            r"^(__libc_)?(malloc|free|calloc|realloc|cfree)$",
            r"^_int_(malloc|free|realloc)",
            r"^(malloc_consolidate|unlink_chunk|sysmalloc|tcache_\w+|arena_get\w*|__libc_memalign)$",
            r"^__rust_(alloc|dealloc|realloc|alloc_zeroed)",
            r"^__rdl_",
            r"^alloc::alloc::",
            # mimalloc (orders-server's allocator): its entry points and
            # internals, and the crate's GlobalAlloc glue.
            r"^_?mi_",
            r"^<mimalloc::MiMalloc as core::alloc::global::GlobalAlloc>",
        ],
    ),
    ("TLS (rustls, ring)", [r"^(rustls|tokio_rustls|ring|rustls_pki_types|webpki)::", r"^ring_core_"]),
    (
        "auth (token check and cache)",
        [
            r"^grpc_platform::auth",
            r"^(jsonwebtoken|sha2|quick_cache|hmac|p256|ecdsa|aws_lc_rs|aws_lc_sys)::",
            r"^aws_lc_",
        ],
    ),
    ("platform: request body", [r"^grpc_platform::middleware::request_body"]),
    ("platform: observe (ids, spans, metrics, access)", [r"^grpc_platform::middleware::(observe|access_log|request_id|trace|call_scope)"]),
    ("platform: deadline", [r"^grpc_platform::middleware::deadline"]),
    ("platform: concurrency, quota", [r"^grpc_platform::middleware::(concurrency|caller_quota)"]),
    ("platform: message size", [r"^grpc_platform::middleware::message_size"]),
    ("platform: grpc only", [r"^grpc_platform::middleware::grpc_only"]),
    ("platform: panic guard, rescue", [r"^grpc_platform::middleware::(panic_guard|rescue)"]),
    ("metrics", [r"^grpc_platform::middleware::metrics", r"^prometheus_client::"]),
    ("platform: other layers", [r"^grpc_platform::middleware::"]),
    ("logging", [r"^grpc_platform::(log_json|log_writer|telemetry)", r"^(tracing|tracing_core|tracing_subscriber|tracing_log|log)::"]),
    ("platform: other", [r"^grpc_platform::"]),
    ("handler (orders::service)", [r"^orders::service"]),
    (
        "store (orders::store, sqlx, SQLite)",
        [r"^orders::store", r"^(sqlx|sqlx_core|sqlx_sqlite|rusqlite|libsqlite3_sys)::", r"^sqlite3"],
    ),
    ("prost (protobuf)", [r"^(prost|tonic_prost|pbjson|pbjson_types)::", r"^orders::pb"]),
    ("orders: other (domain)", [r"^orders::"]),
    ("h2", [r"^h2::"]),
    ("hyper", [r"^(hyper|hyper_util)::"]),
    ("tonic", [r"^tonic::"]),
    ("tokio", [r"^(tokio|tokio_util|tokio_stream|mio)::"]),
    ("tower (service glue)", [r"^(tower|tower_layer|tower_service)::"]),
    ("http, bytes (header maps, buffers)", [r"^(http|http_body|http_body_util|bytes)::"]),
    ("clock_gettime (vdso)", [r"^__vdso_", r"^clock_gettime"]),
]
OTHER = "other"
ORDER = [name for name, _ in COMPONENTS] + [OTHER]
COMPILED = [(name, [re.compile(p) for p in patterns]) for name, patterns in COMPONENTS]

STD = {"core", "alloc", "std", "hashbrown"}
# A path segment that starts a crate path: an identifier followed by `::`,
# not preceded by another `::` or an identifier character.
PATH = re.compile(r"(?<![\w:])([a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)*)")
HASH = re.compile(r"::h[0-9a-f]{16}$")
# What C compilers and symbol versions append: `unlink_chunk.constprop.0`,
# `cfree@GLIBC_2.2.5`.
C_SUFFIX = re.compile(r"(@+[\w.]+|\.(constprop|isra|part|cold|lto_priv)(\.\d+)*)+$")


def key_of(dso: str, symbol: str) -> str:
    """What a sample's symbol is matched on: see COMPONENTS."""
    if dso.startswith("[kernel") or dso == "[guest.kernel]":
        return "[kernel]"
    symbol = C_SUFFIX.sub("", HASH.sub("", symbol.strip()))
    for m in PATH.finditer(symbol):
        crate, rest = m.group(1), m.group(2)
        if not rest:
            continue  # a lone word: a C name, or a generic's `T`
        if crate in STD and not symbol.startswith("alloc::alloc::"):
            continue
        return crate + rest
    return symbol


def component(dso: str, symbol: str) -> str:
    key = key_of(dso, symbol)
    for name, patterns in COMPILED:
        if any(p.search(key) for p in patterns):
            return name
    return OTHER


def perf_symbols(data: Path) -> list[tuple[int, str, str]]:
    """(samples, dso, symbol) per symbol, self time only."""
    done = subprocess.run(
        [
            "perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
            "-n", "--sort", "dso,sym", "--percent-limit", "0", "--field-separator", "\t",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise compare.Failure(f"perf report failed: {done.stderr.strip()[-500:]}")
    rows = []
    for line in done.stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 4:
            continue
        samples, dso, sym = fields[1].strip(), fields[2].strip(), fields[3].strip()
        sym = re.sub(r"^\[[.kgu]\]\s*", "", sym)
        if samples.isdigit():
            rows.append((int(samples), dso, sym))
    return rows


def windows(smoke: bool, seconds: float) -> tuple[float, float]:
    """(seconds profiled, seconds of warm-up) per server: 2 and 1 in the smoke
    form, which checks the pipeline and not the figures; otherwise at least
    2 s profiled, after 2 s of warm-up."""
    return (2.0, 1.0) if smoke else (max(2.0, seconds), 2.0)


def perf_unusable(work: Path) -> str | None:
    """Why perf cannot profile on this machine, or None when it can: it is
    missing, or `perf record` fails (a kernel or container that refuses perf
    events, Debian's `perf` with no build for the running kernel)."""
    if not shutil.which("perf"):
        return "perf is not installed (Debian linux-perf)"
    try:
        done = subprocess.run(
            ["perf", "record", "-e", "cpu-clock", "-F", str(FREQUENCY), "--quiet",
             "-o", str(work / "probe.perf.data"), "--", "true"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"perf record could not run: {e}"
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        return "perf record fails here: " + (lines[-1] if lines else f"exit {done.returncode}")
    return None


def profile(bench, kind: str, seconds: float, warmup: float, out: Path, call_graph: bool = True) -> dict:
    """One server under GetOrder load, profiled for its measured window."""
    # The load of bench/compare's full rounds, whatever plan the bench has
    # (bench/compare --smoke hands over its smoke one): the split depends on
    # how many calls share a connection and a wake-up.
    plan = compare.FULL
    server = bench.start(kind)
    data = out / f"{kind}.perf.data"
    try:
        load = subprocess.Popen(
            bench.load_argv(
                server, "get",
                "--connections", str(plan.connections),
                "--concurrency", str(plan.concurrency),
                "--warmup", f"{warmup}s",
                "--duration", f"{seconds}s",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=compare.clean_env(),
        )
        # orders-load opens its window `warmup` seconds after it has its
        # connections and its order; a moment for those first.
        time.sleep(warmup + 0.3)
        before = compare.cores_busy()
        perf = subprocess.run(
            [
                "taskset", "-c", compare.LOAD_CORE,
                "perf", "record", "-e", "cpu-clock", "-F", str(FREQUENCY), *(["-g"] if call_graph else []), "--quiet",
                "-p", str(server.pid), "-o", str(data), "--", "sleep", f"{seconds - 0.6:g}",
            ],
            capture_output=True,
            text=True,
        )
        after = compare.cores_busy()
        stdout, stderr = load.communicate(timeout=seconds + 120)
        if load.returncode != 0:
            raise compare.Failure(f"orders-load against {kind} failed: {stderr.strip()}")
        if perf.returncode != 0:
            raise compare.Failure(f"perf record failed: {perf.stderr.strip()[-500:]}")
    finally:
        server.stop()
    report = json.loads(stdout)
    rows = perf_symbols(data)
    samples = sum(n for n, _, _ in rows)
    if not samples:
        raise compare.Failure(f"perf recorded no samples of the {kind} server")
    per_call = compare.get(report, "server", "cpu_us_per_call")
    by_component = {name: 0 for name in ORDER}
    for n, dso, sym in rows:
        by_component[component(dso, sym)] += n
    return {
        "kind": kind,
        "calls_per_s": report.get("rps"),
        "calls": report.get("requests"),
        "errors": report.get("errors"),
        "cpu_us_per_call": per_call,
        "server_cpu_percent": compare.get(report, "server", "cpu_percent"),
        "client_cpu_percent": report.get("client_cpu_percent"),
        "cores_busy_percent": compare.busy_percent(before, after),
        "samples": samples,
        # Sampled CPU per call: samples × (1 / FREQUENCY) s over the calls of
        # the (slightly longer) measured window; a check on the /proc figure.
        "sampled_us_per_call": samples / FREQUENCY * 1e6 / report["requests"] * seconds / (seconds - 0.6)
        if report.get("requests") else None,
        "components": {name: n / samples * per_call for name, n in by_component.items()} if per_call else {},
        "component_samples": by_component,
        "top": [
            {"samples": n, "dso": dso, "symbol": sym, "component": component(dso, sym)}
            for n, dso, sym in sorted(rows, reverse=True)[:40]
        ],
    }


def profile_servers(bench, seconds: float, warmup: float, work: Path, call_graph: bool = True) -> dict:
    """The floor, then the full service, each profiled under the same load."""
    return {kind: profile(bench, kind, seconds, warmup, work, call_graph) for kind in ("floor", "full")}


def make_meta(command: str, profile_name: str, seconds: float, loadavg: str) -> dict:
    """Where and how a breakdown was made; `loadavg` is the one read before it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (commit or "unknown") + ("+changes" if dirty else ""),
        "profile": profile_name,
        "seconds": seconds,
        "machine": compare.machine(),
        "loadavg": loadavg,
        "loadavg_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def write(out: Path, results: dict, meta: dict) -> str:
    """breakdown.md and breakdown.json in `out`; returns the markdown. The
    chart, breakdown.png, is drawn by `chart`, which the markdown links."""
    text = markdown(results["floor"], results["full"], meta)
    (out / "breakdown.md").write_text(text + "\n")
    (out / "breakdown.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return text


def shown(floor: dict, full: dict) -> list[str]:
    """The components either server spent a measurable share on, in ORDER."""
    return [
        name for name in ORDER
        if floor["components"].get(name, 0.0) >= 0.005 or full["components"].get(name, 0.0) >= 0.005
    ]


def component_table(floor: dict, full: dict) -> list[str]:
    """The table of µs per call by component, floor, full and the difference,
    with the totals: in breakdown.md and in bench/compare's latest.md. Takes
    `profile`'s results, or any dicts with their `components` and
    `cpu_us_per_call`."""
    L = [
        "| component | floor, µs per call | full service, µs per call | full − floor, µs |",
        "|---|---:|---:|---:|",
    ]
    for name in shown(floor, full):
        a, b = floor["components"].get(name, 0.0), full["components"].get(name, 0.0)
        L.append(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    fa, fb = floor["cpu_us_per_call"] or 0, full["cpu_us_per_call"] or 0
    L.append(f"| **total** | **{fa:.2f}** | **{fb:.2f}** | **{fb - fa:+.2f}** |")
    return L


def chart(floor: dict, full: dict, path: Path, meta: dict) -> None:
    """breakdown.png: each component's µs per call on the floor and on the
    full service (left), and what the full service spends beyond the floor
    (right), the largest differences first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = shown(floor, full)
    a = {n: floor["components"].get(n, 0.0) for n in names}
    b = {n: full["components"].get(n, 0.0) for n in names}
    names.sort(key=lambda n: b[n] - a[n], reverse=True)
    y = list(range(len(names)))
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, 1.6 + 0.3 * len(names)), sharey=True, width_ratios=[1, 1]
    )
    height = 0.4
    left.barh([i - height / 2 for i in y], [a[n] for n in names], height, label="floor (bare tonic, TLS, token)", color="#4c72b0")
    left.barh([i + height / 2 for i in y], [b[n] for n in names], height, label="full service", color="#dd8452")
    left.set_yticks(y, names, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("server CPU per GetOrder, µs")
    left.set_title("Each server, by component")
    left.legend(fontsize=8, loc="lower right")
    diff = [b[n] - a[n] for n in names]
    bars = right.barh(y, diff, 0.6, color=["#c44e52" if d >= 0 else "#55a868" for d in diff])
    right.bar_label(bars, labels=[f"{d:+.2f}" for d in diff], padding=3, fontsize=7)
    right.axvline(0, color="grey", linewidth=0.8)
    right.margins(x=0.15)
    right.set_xlabel("full − floor, µs per call")
    fa, fb = floor["cpu_us_per_call"] or 0, full["cpu_us_per_call"] or 0
    right.set_title(f"What the full service adds: {fb - fa:+.2f} µs ({fa:.2f} → {fb:.2f})")
    fig.suptitle(
        f"Server CPU per GetOrder by component ({meta.get('command', 'bench/breakdown')}, {meta['date']}, "
        f"commit {meta['commit']}, profile {meta['profile']}, {meta['seconds']:g} s per server)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(floor: dict, full: dict, meta: dict) -> str:
    L = ["# Server CPU per GetOrder, by component", ""]
    add = L.append
    add(f"Made by `{meta.get('command', 'bench/breakdown')}` on {meta['date']} (commit `{meta['commit']}`, cargo profile "
        f"`{meta['profile']}`, {meta['seconds']:g} s profiled per server). Machine: {meta['machine']}; "
        f"load average before: {meta['loadavg']}, after: {meta['loadavg_after']} (shared: other jobs ran "
        "beside it when it is well above 2, the two cores this run keeps busy).")
    add("")
    add("GetOrder, closed loop (4 connections, 64 in flight), the server on core 0 and the load "
        "generator on core 1. The CPU per call is the server's user + system time over the profiled "
        "window (`/proc/PID/stat`) over the calls answered in it; each component's share of it is its "
        "share of `perf record -e cpu-clock -F 4999` samples, charged to the function each sample was "
        "in (self time, `perf report --no-children`). With fat LTO, code inlined into another crate's "
        "function counts for that crate: read a platform layer's row as at least what it costs.")
    add("")
    L.extend(component_table(floor, full))
    add("")
    add("Chart: [`breakdown.png`](breakdown.png) (each component on both servers, and the differences, "
        "largest first).")
    add("")
    shares = [r["server_cpu_percent"] for r in (floor, full) if r.get("server_cpu_percent") is not None]
    if shares and min(shares) < 90:
        add(f"The servers had {' and '.join(f'{x:.0f}%' for x in shares)} of their core here (floor, full), "
            "not all of it: other jobs on the machine, or perf's own work on the load generator's core, "
            "held the closed loop back, and a server that is not kept busy batches less (fewer calls per "
            "wake-up, per TLS record, per system call), so every figure is higher than in "
            "`bench/compare`'s rounds, where the server has its whole core. Read the split and the "
            "differences; take the CPU per call itself from `bench/results/latest.md`.")
        add("")
    add("| run | calls/s | calls profiled | server CPU | generator CPU | cores busy | samples | sampled µs per call |")
    add("|---|---:|---:|---:|---:|---|---:|---:|")
    for r in (floor, full):
        add(f"| {r['kind']} | {r['calls_per_s']:,.0f} | {r['calls']:,} | {r['server_cpu_percent']:.0f}% | "
            f"{r['client_cpu_percent']:.0f}% | {'/'.join(f'{c:.0f}%' for c in r['cores_busy_percent'])} | "
            f"{r['samples']:,} | {r['sampled_us_per_call']:.2f} |")
    add("")
    for r in (full, floor):
        add(f"Top symbols, {r['kind']} (self time; µs per call):")
        add("")
        add("| µs per call | component | symbol |")
        add("|---:|---|---|")
        for t in r["top"][:25]:
            us = t["samples"] / r["samples"] * (r["cpu_us_per_call"] or 0)
            sym = HASH.sub("", t["symbol"])
            sym = sym if len(sym) <= 140 else sym[:137] + "..."
            add(f"| {us:.2f} | {t['component']} | `{sym.replace('|', '/')}` |")
        add("")
    return "\n".join(L)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/breakdown", description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--profile", default="production", help="cargo profile of the binaries (set by bench/breakdown)")
    parser.add_argument("--seconds", type=float, default=SECONDS, help=f"seconds profiled per server (default {SECONDS:g})")
    parser.add_argument("--smoke", action="store_true", help="2 s per server, results in a temporary folder")
    parser.add_argument(
        "--no-call-graph",
        action="store_true",
        help="sample without -g: the table uses self time only, and each sample then costs less",
    )
    parser.add_argument("--out", type=Path, help="folder for breakdown.md, breakdown.json and breakdown.png (default bench/results)")
    parser.add_argument("--from-json", type=Path, help="profile nothing: write breakdown.md and its chart again from a breakdown.json")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        floor, full, meta = saved["results"]["floor"], saved["results"]["full"], saved["meta"]
        text = markdown(floor, full, meta)
        out = args.out or compare.RESULTS
        (out / "breakdown.md").write_text(text + "\n")
        chart(floor, full, out / "breakdown.png", meta)
        print(text)
        return 0
    seconds, warmup = windows(args.smoke, args.seconds)
    out = args.out or (Path(tempfile.mkdtemp(prefix="orders-breakdown-")) if args.smoke else compare.RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    profile_dir = {"dev": "debug", "test": "debug"}.get(args.profile, args.profile)
    work = Path(tempfile.mkdtemp(prefix="orders-breakdown-"))
    bench = compare.Bench(args=args, plan=compare.FULL, bin_dir=REPO / "target" / profile_dir, work=work)
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        unusable = perf_unusable(work)
        if unusable:
            print(f"bench/breakdown: {unusable}", file=sys.stderr)
            return 1
        bench.prepare()
        results = profile_servers(bench, seconds, warmup, work, call_graph=not args.no_call_graph)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = make_meta("bench/breakdown" + (" --smoke" if args.smoke else ""), args.profile, seconds, loadavg)
    text = write(out, results, meta)
    chart(results["floor"], results["full"], out / "breakdown.png", meta)
    print(text)
    print(f"bench/breakdown: results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
