//! A text frame that is not valid UTF-8 breaks the WebSocket protocol: the broker closes the
//! connection with 1007 (invalid frame payload data), as RFC 6455 asks, instead of dropping
//! it without a word.

use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, Backend};

async fn a_text_frame_with_invalid_utf8_is_closed_with_1007(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(bad)).await;
    let (code, reason) = c.closed().await.expect("a close frame");
    assert_eq!(code, 1007, "{reason}");
    assert!(reason.contains("UTF-8"), "{reason}");
}

wharf_tests::conformance!(a_text_frame_with_invalid_utf8_is_closed_with_1007);
