"""Shared set-up of the interop tests: generated stubs, the TLS channel and the callers.

The Rust integration test starts the real server and runs this suite against it with
the environment described in ``REQUIRED_ENV``. A missing variable fails the tests that
need it with a message naming it: nothing is skipped.

The Python stubs are generated from the proto files at session start (``pytest_configure``,
before test modules are imported) into a temporary folder put first on ``sys.path``, so
the tests always exercise the proto the server was built from.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import grpc
import jwt
import pytest
from grpc import aio

# Deadline of every unary call, in seconds; streams get STREAM_TIMEOUT as a whole.
TIMEOUT = 10.0
STREAM_TIMEOUT = 30.0

REPO_ROOT = Path(__file__).resolve().parents[2]

REQUIRED_ENV = {
    "ORDERS_ENDPOINT": "host:port of the server under test (TLS)",
    "ORDERS_CA_CERT": "path of the PEM CA certificate that signed the server certificate",
    "ORDERS_TOKEN": "JWT for customer alice, scopes orders:read orders:write",
    "ORDERS_TOKEN_BOB": "JWT for customer bob, scopes orders:read orders:write",
    "ORDERS_TOKEN_STAFF": "JWT for staff, scopes orders:read orders:write orders:admin",
    "ORDERS_TOKEN_READONLY": "JWT for customer alice, scope orders:read only",
    "ORDERS_PROTO_DIR": "the proto/ folder the server was built from (default: the repository's)",
    "PLATFORM_PROTO_DIR": "the platform/proto/ folder the orders proto imports from (default: the repository's)",
}


def require_env(name: str) -> str:
    """The value of an environment variable of ``REQUIRED_ENV``, or a failed test saying which."""
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(
            f"environment variable {name} is not set ({REQUIRED_ENV.get(name, '')}); "
            "the interop suite is run by the Rust integration test, which sets it",
            pytrace=False,
        )
    return value


# --- stubs -------------------------------------------------------------------


def _env_dir(name: str, default: Path) -> Path:
    # Defaults to the repository's folders so `pytest --collect-only` works by hand;
    # the Rust side always sets them.
    folder = Path(os.environ.get(name) or default)
    if not folder.is_dir():
        raise pytest.UsageError(f"{name}={folder} is not a directory")
    return folder


def _proto_dirs() -> list[Path]:
    """The include path: the service's proto folder, then the platform's (the orders
    proto imports grpc_platform/v1/access.proto, the methods' access option, from it)."""
    return [
        _env_dir("ORDERS_PROTO_DIR", REPO_ROOT / "proto"),
        _env_dir("PLATFORM_PROTO_DIR", REPO_ROOT / "platform" / "proto"),
    ]


def _generate_stubs(out_dir: Path) -> None:
    """Runs grpc_tools.protoc on every .proto under the proto dirs, writing *_pb2(_grpc).py."""
    from grpc_tools import protoc

    proto_dirs = _proto_dirs()
    for proto_dir in proto_dirs:
        if not any(proto_dir.rglob("*.proto")):
            raise pytest.UsageError(f"no .proto files under {proto_dir}")
    # Relative to their folder, as imports name them; a set, in case both
    # variables name the same folder.
    protos = sorted({str(p.relative_to(d)) for d in proto_dirs for p in d.rglob("*.proto")})
    # The well-known types (google/protobuf/timestamp.proto, descriptor.proto, ...)
    # ship inside grpc_tools, which pip always installs as plain files.
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
        dirs = ", ".join(map(str, proto_dirs))
        raise pytest.UsageError(f"grpc_tools.protoc failed (exit {code}) on {protos} in {dirs}")
    # Regular packages (not namespace ones), so nothing else named `orders` on
    # sys.path can shadow or merge with the generated code.
    for package in {p.parent for p in out_dir.rglob("*_pb2.py")}:
        for folder in (package, *package.parents):
            if folder == out_dir:
                break
            (folder / "__init__.py").touch()


def pytest_configure(config: pytest.Config) -> None:
    out_dir = Path(tempfile.mkdtemp(prefix="orders-interop-stubs-"))
    config.add_cleanup(lambda: shutil.rmtree(out_dir, ignore_errors=True))
    _generate_stubs(out_dir)
    sys.path.insert(0, str(out_dir))


# --- channel -----------------------------------------------------------------


@pytest.fixture(scope="session")
def endpoint() -> str:
    return require_env("ORDERS_ENDPOINT")


@pytest.fixture(scope="session")
def ca_cert_path() -> str:
    path = require_env("ORDERS_CA_CERT")
    if not Path(path).is_file():
        pytest.fail(f"ORDERS_CA_CERT={path} is not a file", pytrace=False)
    return path


@pytest.fixture(scope="session")
def channel(endpoint: str, ca_cert_path: str):
    """One TLS channel shared by the whole session, verified against the test CA."""
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_cert_path).read_bytes())
    with grpc.secure_channel(endpoint, credentials) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        except grpc.FutureTimeoutError:
            pytest.fail(f"no TLS connection to {endpoint} within {TIMEOUT} s", pytrace=False)
        yield channel


@pytest.fixture(scope="session")
def stub(channel):
    from orders.v1 import orders_pb2_grpc

    return orders_pb2_grpc.OrderServiceStub(channel)


# --- callers -----------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """One identity: its token (empty: no authorization metadata at all)."""

    name: str
    token: str

    @property
    def subject(self) -> str:
        """The token's `sub`, which the server uses as customer id. Read unverified:
        only to learn whom the Rust side made the token for."""
        return jwt.decode(self.token, options={"verify_signature": False})["sub"]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class Client:
    """The OrderService stub bound to one caller: every call carries the caller's
    token and a deadline (TIMEOUT, or STREAM_TIMEOUT for the whole of a streaming
    call); a call may override either with its own ``metadata=`` / ``timeout=``."""

    STREAMING = frozenset({"UpdateOrder", "WatchOrder", "TrackOrders"})

    def __init__(self, stub, caller: Caller):
        self.stub = stub
        self.caller = caller

    def __getattr__(self, method: str):
        rpc = getattr(self.stub, method)
        timeout = STREAM_TIMEOUT if method in self.STREAMING else TIMEOUT

        def call(request, **kwargs):
            kwargs.setdefault("metadata", self.caller.metadata)
            kwargs.setdefault("timeout", timeout)
            return rpc(request, **kwargs)

        return call


@pytest.fixture(scope="session")
def alice_token() -> str:
    return require_env("ORDERS_TOKEN")


@pytest.fixture(scope="session")
def bob_token() -> str:
    return require_env("ORDERS_TOKEN_BOB")


@pytest.fixture(scope="session")
def staff_token() -> str:
    return require_env("ORDERS_TOKEN_STAFF")


@pytest.fixture(scope="session")
def readonly_token() -> str:
    return require_env("ORDERS_TOKEN_READONLY")


@pytest.fixture(scope="session")
def alice(stub, alice_token) -> Client:
    return Client(stub, Caller("alice", alice_token))


@pytest.fixture(scope="session")
def bob(stub, bob_token) -> Client:
    return Client(stub, Caller("bob", bob_token))


@pytest.fixture(scope="session")
def staff(stub, staff_token) -> Client:
    return Client(stub, Caller("staff", staff_token))


@pytest.fixture(scope="session")
def alice_readonly(stub, readonly_token) -> Client:
    return Client(stub, Caller("alice (read-only)", readonly_token))


@pytest.fixture(scope="session")
def anonymous(stub) -> Client:
    """Calls without any authorization metadata."""
    return Client(stub, Caller("anonymous", ""))


# --- grpc.aio ----------------------------------------------------------------


class AioConnection:
    """A grpc.aio channel to the server (TLS, the test CA) and the callers on it, each
    a Client over the aio stub, so every call carries the caller's token and a deadline
    as on the sync channel. Made and used inside one event loop (aio objects belong to
    the loop they were made in): ``async with aio_connect(...) as c: await c.alice...``."""

    def __init__(self, endpoint: str, credentials, tokens: dict[str, str], **channel_args):
        from orders.v1 import orders_pb2_grpc

        self.endpoint = endpoint
        self.channel = aio.secure_channel(endpoint, credentials, **channel_args)
        stub = orders_pb2_grpc.OrderServiceStub(self.channel)
        self.alice = Client(stub, Caller("alice", tokens["alice"]))
        self.bob = Client(stub, Caller("bob", tokens["bob"]))
        self.staff = Client(stub, Caller("staff", tokens["staff"]))
        self.readonly = Client(stub, Caller("alice (read-only)", tokens["readonly"]))
        self.anonymous = Client(stub, Caller("anonymous", ""))

    async def __aenter__(self) -> AioConnection:
        try:
            await asyncio.wait_for(self.channel.channel_ready(), TIMEOUT)
        except asyncio.TimeoutError:
            await self.channel.close()
            pytest.fail(f"no TLS connection to {self.endpoint} within {TIMEOUT} s", pytrace=False)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()


@pytest.fixture(scope="session")
def aio_connect(endpoint, ca_cert_path, alice_token, bob_token, staff_token, readonly_token):
    """``aio_connect(**channel_args)``: a new AioConnection (channel_args: options=,
    compression=, as grpc.aio.secure_channel takes them)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_cert_path).read_bytes())
    tokens = {"alice": alice_token, "bob": bob_token, "staff": staff_token, "readonly": readonly_token}
    return lambda **channel_args: AioConnection(endpoint, credentials, tokens, **channel_args)
