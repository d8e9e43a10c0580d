"""Load of a Python ``grpc.aio`` client (gRPC C-core) for the fault tests.

Run by tests/faults/foreign.rs with the repository's ``.venv/bin/python``. It
generates the stubs from the proto files into a temporary folder (as the
interop suite does), opens ``--channels`` TLS channels verified against the
test CA, and runs ``--concurrency`` workers for ``--duration`` seconds, each
sending one unary call after another: RegisterOrder (a fresh UUID as
``request_id`` each time) or GetOrder of an order this process registered. The
token comes from the ``ORDERS_TOKEN`` environment variable; every call sends it
as ``authorization: Bearer``.

No retries of its own: only what C-core does by itself (transparent retries of
streams the server never processed). A failed call is counted, never sent
again. SIGTERM (or the end of ``--duration``) stops new calls; the calls in
flight finish, then the summary is written to ``--out`` as JSON:

- ``calls``: method -> status code name -> count;
- ``failures``: "CODE: details" -> count;
- ``failed_writes``: every RegisterOrder that failed: request_id, code, details;
- ``channel_left_ready``: how many times a channel was seen leaving READY
  (with one server behind it, each is a connection lost: a recycle or a drain);
- ``goaway_errors``: GOAWAY frames with an error code (HTTP/2 error code ->
  count) received on any connection. C-core logs each of them at INFO whatever
  its tracers; this process reads its own stderr to count them.

"ready" is printed on stdout once the channels are connected and the load starts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from importlib import resources
from pathlib import Path

# Before grpc is loaded: C-core reads its log level once, and logs a GOAWAY
# with an error code only at INFO.
os.environ.setdefault("GRPC_VERBOSITY", "INFO")

import grpc  # noqa: E402

# Deadline of every call, in seconds.
TIMEOUT = 10.0

REPO_ROOT = Path(__file__).resolve().parents[3]


def generate_stubs(proto_dirs: list[Path], out_dir: Path) -> None:
    """grpc_tools.protoc on every .proto under proto_dirs (each also an include
    path) into out_dir, as regular packages."""
    from grpc_tools import protoc

    for proto_dir in proto_dirs:
        if not any(proto_dir.rglob("*.proto")):
            sys.exit(f"no .proto files under {proto_dir}")
    protos = sorted({str(p.relative_to(d)) for d in proto_dirs for p in d.rglob("*.proto")})
    well_known = resources.files("grpc_tools") / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            *(f"-I{d}" for d in proto_dirs),
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if code != 0:
        sys.exit(f"grpc_tools.protoc failed (exit {code}) on {protos}")
    for package in {p.parent for p in out_dir.rglob("*_pb2.py")}:
        for folder in (package, *package.parents):
            if folder == out_dir:
                break
            (folder / "__init__.py").touch()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="gRPC target, e.g. ipv4:127.0.0.1:P1,127.0.0.1:P2")
    p.add_argument("--authority", default="localhost", help="name the server certificate is checked against")
    p.add_argument("--ca", required=True, help="PEM CA certificate of the server")
    p.add_argument("--proto-dir", required=True)
    p.add_argument(
        "--platform-proto-dir",
        default=str(REPO_ROOT / "platform" / "proto"),
        help="the platform's protos, which the orders proto imports (default: the repository's)",
    )
    p.add_argument("--lb", default="pick_first", choices=["pick_first", "round_robin"])
    p.add_argument("--channels", type=int, default=1, help="channels, each with connections of its own")
    p.add_argument("--concurrency", type=int, default=32, help="calls in flight, spread over the channels")
    p.add_argument("--duration", type=float, required=True, help="seconds of load at most")
    p.add_argument("--write-ratio", type=float, default=0.3, help="share of calls that are RegisterOrder")
    p.add_argument(
        "--busy-host",
        action="store_true",
        help="run at the lowest CPU priority, on one CPU: as on a client host busier than the server",
    )
    p.add_argument("--out", required=True, help="where the JSON summary goes")
    return p.parse_args()


class GoawayLog:
    """Counts the "Got goaway [CODE]" lines C-core writes to stderr (fd 2),
    passing everything through to the original stderr."""

    PATTERN = re.compile(rb"Got goaway \[(\d+)\]")

    def __init__(self) -> None:
        self.codes: collections.Counter = collections.Counter()
        self.original = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self.thread.start()

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb") as pipe:
            for line in pipe:
                os.write(self.original, line)
                match = self.PATTERN.search(line)
                if match:
                    self.codes[match.group(1).decode()] += 1

    def close(self) -> None:
        """Puts the original stderr back (the pipe then ends) and waits for the last lines."""
        sys.stderr.flush()
        os.dup2(self.original, 2)
        self.thread.join(timeout=5)


class Tally:
    def __init__(self) -> None:
        self.calls: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.failures: collections.Counter = collections.Counter()
        self.failed_writes: list[dict] = []
        self.channel_left_ready = 0

    def ok(self, method: str) -> None:
        self.calls[method]["OK"] += 1

    def failed(self, method: str, error: grpc.aio.AioRpcError) -> None:
        code = error.code().name
        self.calls[method][code] += 1
        self.failures[f"{code}: {error.details()}"] += 1


async def watch_channel(channel: grpc.aio.Channel, tally: Tally) -> None:
    """Counts the channel's departures from READY until cancelled."""
    state = channel.get_state(try_to_connect=False)
    while True:
        await channel.wait_for_state_change(state)
        new = channel.get_state(try_to_connect=False)
        if state == grpc.ChannelConnectivity.READY and new != grpc.ChannelConnectivity.READY:
            tally.channel_left_ready += 1
        state = new


async def worker(n: int, stub, pb2, metadata, tally: Tally, orders: list[str], stop: asyncio.Event, write_ratio: float) -> None:
    rng = random.Random(n)
    i = 0
    while not stop.is_set():
        i += 1
        if not orders or rng.random() < write_ratio:
            request_id = str(uuid.uuid4())
            request = pb2.RegisterOrderRequest(
                items=[pb2.LineItem(sku=f"SKU-{i % 1000}", quantity=1 + i % 5, unit_price_cents=250)],
                address=pb2.Address(street="Main Street", number=12, city="Utrecht", postal_code="3511 AB"),
                request_id=request_id,
            )
            try:
                response = await stub.RegisterOrder(request, metadata=metadata, timeout=TIMEOUT)
            except grpc.aio.AioRpcError as e:
                tally.failed("RegisterOrder", e)
                tally.failed_writes.append({"request_id": request_id, "code": e.code().name, "details": e.details()})
                continue
            tally.ok("RegisterOrder")
            orders.append(response.order_id)
        else:
            order_id = rng.choice(orders)
            try:
                order = await stub.GetOrder(pb2.GetOrderRequest(order_id=order_id), metadata=metadata, timeout=TIMEOUT)
            except grpc.aio.AioRpcError as e:
                tally.failed("GetOrder", e)
                continue
            if order.id != order_id:
                raise AssertionError(f"GetOrder({order_id}) answered order {order.id}")
            tally.ok("GetOrder")


async def run(args: argparse.Namespace) -> dict:
    from orders.v1 import orders_pb2 as pb2
    from orders.v1 import orders_pb2_grpc

    token = os.environ.get("ORDERS_TOKEN", "").strip()
    if not token:
        sys.exit("ORDERS_TOKEN is not set")
    metadata = (("authorization", f"Bearer {token}"),)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(args.ca).read_bytes())
    options = [
        ("grpc.ssl_target_name_override", args.authority),
        ("grpc.service_config", json.dumps({"loadBalancingConfig": [{args.lb: {}}]})),
        # A restarted replica is found again within a second. (Not
        # grpc.min_reconnect_backoff_ms: C-core takes it as the connection
        # attempt's timeout too, TLS handshake and SETTINGS included.)
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if args.channels > 1:
        # C-core shares connections between channels alike unless told not to.
        options.append(("grpc.use_local_subchannel_pool", 1))
    tally = Tally()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    channels = [grpc.aio.secure_channel(args.target, credentials, options=options) for _ in range(args.channels)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=15)
        stubs = [orders_pb2_grpc.OrderServiceStub(channel) for channel in channels]
        watchers = [asyncio.create_task(watch_channel(channel, tally)) for channel in channels]
        print("ready", flush=True)
        started = time.monotonic()
        loop.call_later(args.duration, stop.set)
        orders: list[str] = []
        await asyncio.gather(
            *(
                worker(n, stubs[n % len(stubs)], pb2, metadata, tally, orders, stop, args.write_ratio)
                for n in range(args.concurrency)
            )
        )
        elapsed = time.monotonic() - started
        for watcher in watchers:
            watcher.cancel()
    finally:
        for channel in channels:
            await channel.close()
    return {
        "client": f"grpc.aio {grpc.__version__}",
        "elapsed_secs": elapsed,
        "calls": {m: dict(c) for m, c in tally.calls.items()},
        "failures": dict(tally.failures),
        "failed_writes": tally.failed_writes,
        "channel_left_ready": tally.channel_left_ready,
    }


def main() -> None:
    args = parse_args()
    if args.busy_host:
        # Every thread C-core starts later inherits both. The scheduler then
        # interrupts the transport's threads anywhere, for instance between
        # giving a new stream its id and writing its HEADERS, as it does on
        # a loaded host; that is when a GOAWAY read meanwhile catches the
        # stream on the wrong side of the server's last stream id.
        os.nice(19)
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    goaways = GoawayLog()
    stubs = Path(tempfile.mkdtemp(prefix="orders-aio-load-"))
    try:
        generate_stubs([Path(args.proto_dir), Path(args.platform_proto_dir)], stubs)
        sys.path.insert(0, str(stubs))
        summary = asyncio.run(run(args))
    finally:
        shutil.rmtree(stubs, ignore_errors=True)
        goaways.close()
    summary["goaway_errors"] = dict(goaways.codes)
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(summary))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
