"""reliability/soak: the full service under a long mixed load.

Measures the service's top rate on the `mix` workload (of every 20 calls 16
GetOrder, 2 RegisterOrder, 1 UpdateOrder, 1 ListOrders, plus WatchOrder
streams), then runs it at half that rate for `--minutes` (10 by default),
sampling the server's resident memory, open file descriptors and threads
every few seconds. Passes when no call failed, every watcher received its
orders' versions in order without a gap or a repeat (streams resume when a
connection is recycled), and, after the warm-up, memory and descriptors grew
by less than 10%.

Writes reliability/results/soak.{md,json,png}. Not part of CI (it takes
minutes); `reliability/soak --minutes 1` is a quick look. The servers and
the load generator are started exactly as bench/compare starts them (same
production settings, same cores), by reusing its code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import compare  # noqa: E402  (bench/compare.py: servers, load generator, cores)

RESULTS = REPO / "reliability" / "results"
SAMPLE_EVERY = 5.0
GROWTH_LIMIT = 0.10


def sample(pid: int) -> dict | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"].strip()),
        "fds": fds,
    }


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def growth(samples: list[dict], key: str, warmup_s: float) -> dict:
    """Mean of the first and of the last minute after the warm-up."""
    after = [s for s in samples if s["t"] >= warmup_s]
    window = max(1, int(60 / SAMPLE_EVERY))
    first = mean([s[key] for s in after[:window]])
    last = mean([s[key] for s in after[-window:]])
    return {"first": first, "last": last, "growth": (last - first) / first if first else 0.0}


def chart(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, (mem, fds) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    mem.plot(t, [s["rss_kib"] / 1024 for s in samples], color="tab:blue")
    mem.set_ylabel("resident memory (MiB)")
    mem.set_ylim(bottom=0)
    mem.grid(alpha=0.3)
    fds.plot(t, [s["fds"] for s in samples], color="tab:orange", label="open file descriptors")
    fds.plot(t, [s["threads"] for s in samples], color="tab:green", label="threads")
    fds.set_ylabel("count")
    fds.set_xlabel("minutes")
    fds.set_ylim(bottom=0)
    fds.grid(alpha=0.3)
    fds.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(prog="reliability/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    parser.add_argument("--rate", type=float, help="calls a second (default: half the measured top rate)")
    parser.add_argument("--profile", default="release", help="cargo profile of the binaries (set by reliability/soak)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()

    plan = compare.FULL
    work = Path(tempfile.mkdtemp(prefix="orders-soak-"))
    bin_dir = REPO / "target" / ("debug" if args.profile == "dev" else args.profile)
    bench = compare.Bench(args=argparse.Namespace(keep=False), plan=plan, bin_dir=bin_dir, work=work)
    bench.prepare()

    server = bench.start("full")
    try:
        rate = args.rate
        top = None
        if rate is None:
            compare.log("measuring the top rate of the mix (closed loop, 20 s)")
            top = bench.load(
                server, "mix", "--connections", "4", "--concurrency", "64",
                "--warmup", "3s", "--duration", "20s",
            )
            rate = round(top["rps"] / 2)
        duration = args.minutes * 60
        compare.log(f"soak: {rate} calls/s of the mix for {args.minutes:g} min")
        samples: list[dict] = []
        started = time.monotonic()
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                s = sample(server.pid)
                if s is not None:
                    s["t"] = round(time.monotonic() - started, 1)
                    samples.append(s)
                stop.wait(SAMPLE_EVERY)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        report = bench.load(
            server, "mix", "--connections", "4", "--rate", str(rate),
            "--concurrency", "1000", "--warmup", "0s", "--duration", f"{duration}s",
            timeout=duration + 300,
        )
        stop.set()
        thread.join()
        alive = server.proc.poll() is None
    finally:
        server.stop()

    warmup_s = min(60.0, duration / 5)
    errors = report.get("errors", {})
    failed = sum(errors.values())
    memory = growth(samples, "rss_kib", warmup_s)
    fds = growth(samples, "fds", warmup_s)
    watch = report.get("watch") or {}
    out_of_order = watch.get("out_of_order", 0)
    passed = (
        alive
        and not failed
        and not out_of_order
        and not watch.get("open_failed", 0)
        and memory["growth"] < GROWTH_LIMIT
        and fds["growth"] < GROWTH_LIMIT
    )

    args.out.mkdir(parents=True, exist_ok=True)
    command = "reliability/soak" + ("" if args.minutes == 10 else f" --minutes {args.minutes:g}")
    result = {
        "command": command,
        "machine": compare.machine(),
        "rate": rate,
        "top_rps": top and top["rps"],
        "duration_s": duration,
        "load": {k: v for k, v in report.items() if k != "orders"},
        "server_alive_at_end": alive,
        "memory": memory,
        "fds": fds,
        "passed": passed,
        "samples": samples,
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(samples, args.out / "soak.png", f"{command}: {rate} calls/s of the mix")

    lat = report.get("latency") or {}
    rows = [
        ("load", f"{rate} calls/s of the mix (half the measured top rate {top['rps']:.0f}/s)" if top else f"{rate} calls/s"),
        ("duration", f"{duration / 60:g} min"),
        ("calls", f"{report['requests']} ({report['ok']} ok), errors: {errors or 'none'}"),
        ("calls sent again (never left the client: connection closed first)", f"{report.get('resent', 0)}"),
        (
            "watch streams",
            f"{watch.get('watchers', 0)} watchers, {watch.get('events_seen', 0)} events, "
            f"{out_of_order} out of order; {watch.get('resumed', 0)} resumed after ending with "
            f"{watch.get('stream_errors') or 'nothing'}; {watch.get('open_failed', 0)} failed to open",
        ),
        ("latency p50 / p99 / p99.9", " / ".join(f"{lat.get(k, 0) / 1000:.2f} ms" for k in ("p50_us", "p99_us", "p999_us"))),
        ("resident memory, first → last minute after warm-up", f"{memory['first'] / 1024:.1f} → {memory['last'] / 1024:.1f} MiB ({memory['growth']:+.1%})"),
        ("open file descriptors, same", f"{fds['first']:.0f} → {fds['last']:.0f} ({fds['growth']:+.1%})"),
        ("server alive at the end", "yes" if alive else "NO"),
        ("verdict", "PASS" if passed else "FAIL"),
    ]
    md = [
        "# Soak: the full service under a long mixed load",
        "",
        f"Made by `{command}` on {compare.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Server: production settings, TLS, ES256 tokens, SQLite; server on core "
        f"{compare.SERVER_CORE}, load generator on core {compare.LOAD_CORE}.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        f"Samples every {SAMPLE_EVERY:g} s; growth compares the first and the last minute after a "
        f"{warmup_s:g} s warm-up (limit {GROWTH_LIMIT:.0%}). Chart: `soak.png`; every sample: `soak.json`.",
        "",
        "![soak](soak.png)",
        "",
    ]
    (args.out / "soak.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
