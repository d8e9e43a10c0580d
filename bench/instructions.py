"""bench/instructions: user-space instructions per GetOrder call, counted by
callgrind, for the floor (bare tonic with TLS) and one or more builds of
orders-server. Run it through ``bench/instructions``, which installs valgrind
and builds the binaries first.

Why: on a shared machine, time per call drifts by a third between rounds,
so a change worth a few percent hides in the noise of interleaved rounds.
An instruction count does not drift: the same build under the same load
counts the same to within a fraction of a percent. It is no measure of
time (no kernel, no waits, no cache misses; SHA-256 runs in software under
valgrind), so it says whether a change removed work from the user-space
path, and the interleaved rounds of ``bench/compare --only-rounds`` say what
that was worth.

For each server (started under ``valgrind --tool=callgrind`` with counting
off, on core 0): a warm-up load, then counting on for a closed-loop GetOrder
load as ``bench/compare`` runs it (4 connections, 64 in flight), counting
off; the instructions counted over the calls answered gives the figure. The
callgrind files stay in the work folder for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as C  # noqa: E402


def log(message: str) -> None:
    print(f"bench/instructions: {message}", file=sys.stderr, flush=True)


def counted(path: Path) -> int:
    """The instructions a callgrind output file counted (its `totals:` line)."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise C.Failure(f"{path}: no totals line")


def measure(bench: C.Bench, label: str, binary: Path, seconds: float, rep: int) -> float:
    port, admin = C.free_port(), C.free_port()
    out = bench.work / f"callgrind-{label}-{rep}.out"
    if label == "floor":
        argv = [str(binary), "--addr", f"127.0.0.1:{port}",
                "--tls-cert", str(bench.certs / "server.pem"), "--tls-key", str(bench.certs / "server.key")]
        env = C.clean_env()
    else:
        argv = [str(binary)]
        env = bench.full_env(port, admin)
    log_path = bench.work / f"{label}-{rep}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["taskset", "-c", C.SERVER_CORE, "valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=C.REPO,
        )
    server = C.Server(label, f"https://127.0.0.1:{port}", proc, log_path, tls=True, admin=admin)
    try:
        if label == "floor":
            C.wait_tcp(server, port, limit=120)
        else:
            C.wait_serving(server, admin, limit=120)
        load = ["--connections", "4", "--concurrency", "64", "--warmup", "0s"]
        bench.load(server, "get", *load, "--duration", "2s")
        C.run(["callgrind_control", "--instr=on", str(proc.pid)])
        report = bench.load(server, "get", *load, "--duration", f"{seconds}s")
        C.run(["callgrind_control", "--instr=off", str(proc.pid)])
    finally:
        server.stop()
    if report.get("errors"):
        raise C.Failure(f"{label}: calls failed: {report['errors']}")
    # The load registers its order first (one call) before the measured calls.
    return counted(out) / (report["requests"] + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="*", metavar="LABEL=PATH",
                        help="orders-server builds to count (default: full=the production build)")
    parser.add_argument("--profile", default="production", help="cargo profile of the binaries (set by bench/instructions)")
    parser.add_argument("--seconds", type=float, default=8, help="counted load per server (default: 8)")
    parser.add_argument("--reps", type=int, default=2, help="runs per server, interleaved (default: 2)")
    parser.add_argument("--no-floor", action="store_true", help="leave the floor out")
    args = parser.parse_args()

    bin_dir = C.REPO / "target" / args.profile
    builds = [] if args.no_floor else [("floor", bin_dir / "bench-bare-server")]
    for spec in args.builds or [f"full={bin_dir / 'orders-server'}"]:
        label, _, path = spec.partition("=")
        if not path or label == "floor":
            parser.error(f"{spec}: expected LABEL=PATH, LABEL not 'floor'")
        builds.append((label, Path(path)))
    work = Path(tempfile.mkdtemp(prefix="orders-instructions-"))
    bench = C.Bench(args=argparse.Namespace(smoke=False), plan=C.FULL, bin_dir=bin_dir, work=work)
    bench.prepare()
    counts: dict[str, list[float]] = {label: [] for label, _ in builds}
    for rep in range(args.reps):
        for label, binary in builds:
            n = measure(bench, label, binary, args.seconds, rep)
            counts[label].append(n)
            log(f"{label}, run {rep + 1}: {n:,.0f} instructions per GetOrder")
    print(json.dumps({"work": str(work), "instructions_per_call": counts}))
    print("| server | instructions per GetOrder (median of runs) | runs |", file=sys.stderr)
    print("|---|---:|---|", file=sys.stderr)
    for label, values in counts.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {label} | {statistics.median(values):,.0f} | {runs} |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
