"""The tutorials' Calculator client, over TLS, with a token where one is due.

The square root is public: TLS alone reaches it, as in the tutorial. The sum
needs the `calculator:use` scope, so that call carries the token in its
metadata. From examples/calculator, after starting calculator-server:

    python -m grpc_tools.protoc -Iproto -I../../platform/proto \
        --python_out=gen --grpc_python_out=gen \
        proto/calculator/calculator.proto \
        ../../platform/proto/grpc_platform/v1/access.proto
    export CALCULATOR_TOKEN=$(cargo run --release --bin calculator-server -- dev-token)
    PYTHONPATH=gen python clients/calculator_client.py 16 2.5 1.5
"""

import os
import sys

import grpc

from calculator import calculator_pb2
from calculator import calculator_pb2_grpc


def run(value, first, second):
    target = os.environ.get("CALCULATOR_TARGET", "localhost:50051")
    with open(os.environ.get("CALCULATOR_CA", "certs/dev/ca.pem"), "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    with grpc.secure_channel(target, credentials) as channel:
        stub = calculator_pb2_grpc.CalculatorStub(channel)

        number = calculator_pb2.Number(value=value)
        response = stub.SquareRoot(number)
        print("square root:", response.value)

        token = os.environ.get("CALCULATOR_TOKEN", "")
        metadata = [("authorization", "Bearer " + token)] if token else []
        pair = calculator_pb2.NumberPair(first=first, second=second)
        response = stub.Add(pair, metadata=metadata)
        print("sum:", response.value)


if __name__ == "__main__":
    run(*(float(arg) for arg in sys.argv[1:4]))
