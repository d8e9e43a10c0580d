"""The route guide tutorial's client, over TLS with a token.

Two additions to the tutorial: the channel is a secure one, made with
grpc.ssl_channel_credentials, and each call carries the token in its
metadata. The route it records is fixed (every third place of the map,
data/route_guide_db.json) rather than random, so what it prints is the same
on every run. An argument picks one call (get_feature, list_features,
record_route, route_chat); without one it makes them all. From
examples/route_guide, after starting route-guide-server:

    python -m grpc_tools.protoc -Iproto -I../../platform/proto \
        --python_out=gen --grpc_python_out=gen \
        proto/routeguide/route_guide.proto \
        ../../platform/proto/grpc_platform/v1/access.proto
    export ROUTE_GUIDE_TOKEN=$(cargo run --release --bin route-guide-server -- dev-token)
    PYTHONPATH=gen python clients/route_guide_client.py
"""

import json
import logging
import os
import sys

import grpc

from routeguide import route_guide_pb2
from routeguide import route_guide_pb2_grpc

DATABASE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "data", "route_guide_db.json"
)


def read_route_guide_database():
    """Reads the map's places as Feature messages, as the tutorial's
    route_guide_resources does."""
    with open(DATABASE) as route_guide_db_file:
        return [
            route_guide_pb2.Feature(
                name=item["name"],
                location=route_guide_pb2.Point(
                    latitude=item["location"]["latitude"],
                    longitude=item["location"]["longitude"],
                ),
            )
            for item in json.load(route_guide_db_file)
        ]


def make_route_note(message, latitude, longitude):
    return route_guide_pb2.RouteNote(
        message=message,
        location=route_guide_pb2.Point(latitude=latitude, longitude=longitude),
    )


def format_point(point):
    # not delegating in point.__str__ because it is an empty string when its
    # values are zero. In addition, it puts a newline between the fields.
    return "latitude: %d, longitude: %d" % (point.latitude, point.longitude)


def guide_get_one_feature(stub, point, metadata):
    feature = stub.GetFeature(point, metadata=metadata)
    if not feature.location:
        print("Server returned incomplete feature")
        return

    if feature.name:
        print(
            "Feature called %r at %s"
            % (feature.name, format_point(feature.location))
        )
    else:
        print("Found no feature at %s" % format_point(feature.location))


def guide_get_feature(stub, metadata):
    guide_get_one_feature(
        stub,
        route_guide_pb2.Point(latitude=441032150, longitude=-682518830),
        metadata,
    )
    guide_get_one_feature(
        stub, route_guide_pb2.Point(latitude=0, longitude=0), metadata
    )


def guide_list_features(stub, metadata):
    rectangle = route_guide_pb2.Rectangle(
        lo=route_guide_pb2.Point(latitude=441200000, longitude=-682400000),
        hi=route_guide_pb2.Point(latitude=441400000, longitude=-682000000),
    )
    print("Looking for features between 44.12, -68.24 and 44.14, -68.20")

    features = stub.ListFeatures(rectangle, metadata=metadata)

    for feature in features:
        print(
            "Feature called %r at %s"
            % (feature.name, format_point(feature.location))
        )


def generate_route(feature_list):
    for feature in feature_list[::3]:
        print("Visiting point %s" % format_point(feature.location))
        yield feature.location


def guide_record_route(stub, metadata):
    feature_list = read_route_guide_database()

    route_iterator = generate_route(feature_list)
    route_summary = stub.RecordRoute(route_iterator, metadata=metadata)
    print("Finished trip with %s points " % route_summary.point_count)
    print("Passed %s features " % route_summary.feature_count)
    print("Travelled %s meters " % route_summary.distance)
    print("It took %s seconds " % route_summary.elapsed_time)


def generate_messages():
    messages = [
        make_route_note("First message", 0, 0),
        make_route_note("Second message", 0, 1),
        make_route_note("Third message", 1, 0),
        make_route_note("Fourth message", 0, 0),
        make_route_note("Fifth message", 1, 0),
    ]
    for msg in messages:
        print("Sending %s at %s" % (msg.message, format_point(msg.location)))
        yield msg


def guide_route_chat(stub, metadata):
    responses = stub.RouteChat(generate_messages(), metadata=metadata)
    for response in responses:
        print(
            "Received message %s at %s"
            % (response.message, format_point(response.location))
        )


CALLS = {
    "get_feature": ("GetFeature", guide_get_feature),
    "list_features": ("ListFeatures", guide_list_features),
    "record_route": ("RecordRoute", guide_record_route),
    "route_chat": ("RouteChat", guide_route_chat),
}


def run(calls):
    target = os.environ.get("ROUTE_GUIDE_TARGET", "localhost:50051")
    with open(os.environ.get("ROUTE_GUIDE_CA", "certs/dev/ca.pem"), "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    token = os.environ.get("ROUTE_GUIDE_TOKEN", "")
    metadata = [("authorization", "Bearer " + token)] if token else []
    with grpc.secure_channel(target, credentials) as channel:
        stub = route_guide_pb2_grpc.RouteGuideStub(channel)
        for call in calls:
            title, guide = CALLS[call]
            print("-------------- %s --------------" % title)
            guide(stub, metadata)


if __name__ == "__main__":
    logging.basicConfig()
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1] not in CALLS):
        sys.exit("usage: route_guide_client.py [%s]" % "|".join(CALLS))
    run(sys.argv[1:] or list(CALLS))
