//! Property tests of what the host decodes from the guest, which it does not trust: any bytes
//! as any answer the shim reads, and the stdio header frame. Decoding may fail; it must never
//! panic, and the frame bound must hold for every prefix.

use isola_agent_proto::agent::{self, stdio_stream_header::Stream, StdioStreamHeader};
use isola_agent_proto::health;
use isola_agent_proto::stdio_header::{body_len, decode, encode, HeaderError};
use isola_agent_proto::MAX_STDIO_HEADER_LEN;
use proptest::prelude::*;
use protobuf::Message;

/// Parses `bytes` as `M`; Ok or Err, never a panic. When it parses, re-encoding and parsing
/// again gives the same message (decoding is consistent).
fn parses_or_fails<M: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = M::parse_from_bytes(bytes) {
        let again = M::parse_from_bytes(&m.write_to_bytes().unwrap()).unwrap();
        assert_eq!(again, m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_as_any_answer(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        parses_or_fails::<health::HealthCheckResponse>(&bytes);
        parses_or_fails::<health::VersionCheckResponse>(&bytes);
        parses_or_fails::<agent::WaitProcessResponse>(&bytes);
        parses_or_fails::<agent::StatsContainerResponse>(&bytes);
        parses_or_fails::<agent::GuestDetailsResponse>(&bytes);
        parses_or_fails::<agent::OOMEvent>(&bytes);
        parses_or_fails::<StdioStreamHeader>(&bytes);
    }

    #[test]
    fn the_header_bound_holds_for_every_prefix(prefix in any::<[u8; 4]>()) {
        let n = u32::from_be_bytes(prefix);
        match body_len(prefix) {
            Ok(len) => prop_assert!(n <= MAX_STDIO_HEADER_LEN && len == n as usize),
            Err(HeaderError::TooLong(m)) => prop_assert!(m == n && n > MAX_STDIO_HEADER_LEN),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn headers_round_trip(
        container_id in "[a-zA-Z0-9_.-]{0,64}",
        exec_id in "[a-zA-Z0-9_.-]{0,64}",
        stream in prop::sample::select(vec![Stream::STDIN, Stream::STDOUT, Stream::STDERR]),
    ) {
        let h = StdioStreamHeader {
            container_id,
            exec_id,
            stream: stream.into(),
            ..Default::default()
        };
        let frame = encode(&h);
        let len = body_len(frame[..4].try_into().unwrap()).unwrap();
        prop_assert_eq!(len, frame.len() - 4);
        prop_assert_eq!(decode(&frame[4..]).unwrap(), h);
    }

    #[test]
    fn truncated_or_flipped_frames_never_panic(
        cut in 0usize..200,
        flip in any::<(usize, u8)>(),
    ) {
        let h = StdioStreamHeader {
            container_id: "c".repeat(60),
            exec_id: "e".repeat(60),
            ..Default::default()
        };
        let mut frame = encode(&h);
        let i = flip.0 % frame.len();
        frame[i] ^= flip.1;
        let body = &frame[4..frame.len().min(4 + cut)];
        let _ = decode(body);
        let _ = body_len(frame[..4].try_into().unwrap());
    }
}
