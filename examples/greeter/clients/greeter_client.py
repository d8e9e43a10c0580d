"""The helloworld tutorial's Greeter client, over TLS with a token.

Two additions to the tutorial: the channel is a secure one, made with
grpc.ssl_channel_credentials, and the call carries the token in its
metadata. From examples/greeter, after starting greeter-server:

    python -m grpc_tools.protoc -Iproto -I../../platform/proto \
        --python_out=gen --grpc_python_out=gen \
        proto/helloworld/helloworld.proto \
        ../../platform/proto/grpc_platform/v1/access.proto
    export GREETER_TOKEN=$(cargo run --release --bin greeter-server -- dev-token)
    PYTHONPATH=gen python clients/greeter_client.py
"""

import logging
import os

import grpc

from helloworld import helloworld_pb2
from helloworld import helloworld_pb2_grpc


def run():
    target = os.environ.get("GREETER_TARGET", "localhost:50051")
    with open(os.environ.get("GREETER_CA", "certs/dev/ca.pem"), "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    token = os.environ.get("GREETER_TOKEN", "")
    metadata = [("authorization", "Bearer " + token)] if token else []
    print("Will try to greet world ...")
    with grpc.secure_channel(target, credentials) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        response = stub.SayHello(
            helloworld_pb2.HelloRequest(name="you"), metadata=metadata
        )
    print("Greeter client received: " + response.message)


if __name__ == "__main__":
    logging.basicConfig()
    run()
