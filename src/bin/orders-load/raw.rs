//! The lean path for the calls made at the top rate (GetOrder,
//! RegisterOrder): requests encoded once (a registration only appends its
//! `request_id`), responses read as bytes and dropped, not decoded. The load
//! generator then spends per call little beyond what HTTP/2 and gRPC framing
//! cost, which a server must spend too, so at the top rate the server runs
//! out of CPU first. The gRPC status is still read from the trailers, so
//! errors are counted as with the generated client (`--typed` uses that one
//! for every call).

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

pub const GET_ORDER: &str = "/orders.v1.OrderService/GetOrder";
pub const REGISTER_ORDER: &str = "/orders.v1.OrderService/RegisterOrder";

/// Sends bytes already encoded; reads the reply's length only.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = usize;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = usize;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<usize>, Status> {
        let n = src.remaining();
        src.advance(n);
        Ok(Some(n))
    }
}

pub type RawClient = tonic::client::Grpc<Channel>;

/// One unary call of `path` with a pre-encoded message; an empty reply is an
/// error (every method called this way answers a non-empty message).
pub async fn unary(
    client: &mut RawClient,
    request: tonic::Request<Bytes>,
    path: &'static str,
) -> Result<(), Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let reply = client
        .unary(request, PathAndQuery::from_static(path), RawCodec)
        .await?;
    if *reply.get_ref() == 0 {
        return Err(Status::internal("empty reply"));
    }
    Ok(())
}

/// The encoded message.
pub fn encode(message: &impl Message) -> Bytes {
    message.encode_to_vec().into()
}

/// `prefix` (an encoded RegisterOrderRequest without `request_id`) with a
/// `request_id` appended: protobuf fields may come in any order, and field 3
/// appears once, so this is the encoding of the request with that id.
pub fn with_request_id(prefix: &Bytes, request_id: &str) -> Bytes {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut buf = BytesMut::with_capacity(prefix.len() + 2 + request_id.len());
    buf.put_slice(prefix);
    encode_key(3, WireType::LengthDelimited, &mut buf);
    encode_varint(request_id.len() as u64, &mut buf);
    buf.put_slice(request_id.as_bytes());
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use orders::pb;

    #[test]
    fn an_appended_request_id_encodes_the_same_request() {
        let mut request = crate::workload::new_order();
        let prefix = encode(&request);
        let id = "0190f1c4-6a7a-7cc1-9f4b-1b2c3d4e5f60";
        let raw = with_request_id(&prefix, id);
        request.request_id = id.into();
        assert_eq!(pb::RegisterOrderRequest::decode(raw).unwrap(), request);
    }
}
