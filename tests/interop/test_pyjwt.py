"""Tokens made by an independent JWT implementation (PyJWT), so the server's checks
don't only agree with the Rust code that also mints the test tokens.

PyJWT signs ES256 tokens with the server's development signing key; good ones must
work, and each spoiled one (expired, wrong audience, wrong issuer, `alg: none`, HS256
"signed" with the public key, another key claiming our kid) must be UNAUTHENTICATED
with the matching ErrorInfo reason.

Environment (set by the Rust driver, tests/interop.rs): ORDERS_SIGNING_KEY (PEM path
of the dev ES256 key), ORDERS_KID (its kid), ORDERS_ISSUER, ORDERS_AUDIENCE.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import grpc
import jwt
import pytest
from conftest import TIMEOUT, require_env
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Generated at session start by conftest.py.
from orders.v1 import orders_pb2 as pb  # isort: skip

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def signing_key() -> bytes:
    path = Path(require_env("ORDERS_SIGNING_KEY"))
    if not path.is_file():
        pytest.fail(f"ORDERS_SIGNING_KEY={path} is not a file", pytrace=False)
    return path.read_bytes()


@pytest.fixture(scope="module")
def kid() -> str:
    return require_env("ORDERS_KID")


@pytest.fixture(scope="module")
def claims():
    issuer, audience = require_env("ORDERS_ISSUER"), require_env("ORDERS_AUDIENCE")

    def make(sub: str = "alice", **overrides) -> dict:
        now = int(time.time())
        values = {
            "sub": sub,
            "scope": "orders:read orders:write",
            "iss": issuer,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }
        return {**values, **overrides}

    return make


def es256(payload: dict, key: bytes, kid: str) -> str:
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": kid})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(payload: dict, secret: bytes, kid: str) -> str:
    """PyJWT refuses an HMAC secret that looks like a PEM key (its own defence against
    algorithm confusion), so the attacker's token is built by hand."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64url(json.dumps(payload).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64url(signature)}"


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code().name} carries no google.rpc.Status"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    raise AssertionError("no ErrorInfo in the error details")


def test_pyjwt_es256_token_registers_and_gets_an_order(stub, signing_key, kid, claims):
    token = es256(claims("alice"), signing_key, kid)
    request = pb.RegisterOrderRequest(
        items=[pb.LineItem(sku=f"PYJWT-{uuid.uuid4().hex[:8].upper()}", quantity=1, unit_price_cents=100)],
        address=pb.Address(street="Main Street", number=1, city="Springfield", postal_code="00001"),
    )
    order = stub.RegisterOrder(request, metadata=metadata(token), timeout=TIMEOUT).order
    assert order.customer_id == "alice"
    got = stub.GetOrder(pb.GetOrderRequest(order_id=order.id), metadata=metadata(token), timeout=TIMEOUT)
    assert got == order
    # A second token for the same subject (another signature, same key) sees it too.
    other = es256(claims("alice", scp=["orders:read"], scope=None), signing_key, kid)
    assert stub.GetOrder(pb.GetOrderRequest(order_id=order.id), metadata=metadata(other), timeout=TIMEOUT) == got


def spoiled_tokens(signing_key: bytes, kid: str, claims) -> dict[str, tuple[str, str]]:
    """name -> (token, expected ErrorInfo reason)."""
    public_pem = (
        serialization.load_pem_private_key(signing_key, password=None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    stranger = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    now = int(time.time())
    return {
        "expired": (es256(claims(exp=now - 3600, iat=now - 7200, nbf=now - 7200), signing_key, kid), "TOKEN_EXPIRED"),
        "wrong audience": (es256(claims(aud="someone-else"), signing_key, kid), "WRONG_AUDIENCE"),
        "wrong issuer": (es256(claims(iss="https://evil.example"), signing_key, kid), "WRONG_ISSUER"),
        "not yet valid": (es256(claims(nbf=now + 3600), signing_key, kid), "TOKEN_NOT_YET_VALID"),
        "alg none": (jwt.encode(claims(), None, algorithm="none", headers={"kid": kid}), "MALFORMED_TOKEN"),
        "HS256 signed with the public key": (hs256_by_hand(claims(), public_pem, kid), "ALGORITHM_NOT_ALLOWED"),
        "another key claiming our kid": (es256(claims(), stranger, kid), "BAD_SIGNATURE"),
    }


SPOILED = [
    "expired",
    "wrong audience",
    "wrong issuer",
    "not yet valid",
    "alg none",
    "HS256 signed with the public key",
    "another key claiming our kid",
]


@pytest.mark.parametrize("kind", SPOILED)
def test_spoiled_pyjwt_tokens_are_unauthenticated(stub, signing_key, kid, claims, kind):
    token, expected_reason = spoiled_tokens(signing_key, kid, claims)[kind]
    with pytest.raises(grpc.RpcError) as info:
        stub.ListOrders(pb.ListOrdersRequest(), metadata=metadata(token), timeout=TIMEOUT)
    error = info.value
    assert error.code() == Code.UNAUTHENTICATED, f"{kind}: {error.code().name} {error.details()}"
    assert reason(error) == expected_reason, kind
    assert token not in (error.details() or ""), "the error echoes the token"
