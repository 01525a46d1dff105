//! The browser client's parsing, in a real browser: the SSE parser, and
//! reading events from a fetch-style streaming body whose chunks split lines.
#![cfg(target_arch = "wasm32")]

use schnell::web::read_sse;
use schnell::web::sse::{SseEvent, SseParser};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const STREAM: &str = "event: image_generation.partial_image\r\ndata: {\"step\":1,\"total_steps\":2,\"b64_json\":\"AA==\"}\r\n\r\n: keep-alive\n\nevent: image_generation.completed\ndata: {\"seed\":7,\ndata: \"b64_json\":\"QUJD\"}\n\n";

/// A streaming `Response` whose body arrives in exactly these chunks.
fn streamed(chunks: &[&str]) -> web_sys::Response {
    let make = js_sys::Function::new_with_args(
        "chunks",
        "const enc = new TextEncoder();
         return new Response(new ReadableStream({ start(c) {
             for (const x of chunks) c.enqueue(enc.encode(x));
             c.close();
         }}), { headers: { 'content-type': 'text/event-stream' } });",
    );
    let array: js_sys::Array = chunks.iter().map(|c| JsValue::from_str(c)).collect();
    make.call1(&JsValue::NULL, &array).unwrap().unchecked_into()
}

#[wasm_bindgen_test]
fn the_parser_gives_the_same_events_at_any_split() {
    let whole = SseParser::new().feed(STREAM.as_bytes());
    assert_eq!(whole.len(), 2);
    for cut in 0..STREAM.len() {
        let mut parser = SseParser::new();
        let mut events = parser.feed(&STREAM.as_bytes()[..cut]);
        events.extend(parser.feed(&STREAM.as_bytes()[cut..]));
        assert_eq!(events, whole, "split at {cut}");
    }
}

#[wasm_bindgen_test]
async fn events_are_read_from_a_streaming_body() {
    // Chunks end inside a line, between \r and \n, and inside the JSON.
    let chunks = [
        &STREAM[..9],
        &STREAM[9..38],
        &STREAM[38..60],
        &STREAM[60..140],
        &STREAM[140..],
    ];
    assert!(chunks[1].ends_with('\r') && chunks[2].starts_with('\n'));
    assert!(chunks.iter().all(|c| !c.is_empty()));
    let mut events: Vec<SseEvent> = Vec::new();
    read_sse(&streamed(&chunks), |e| {
        events.push(e);
        true
    })
    .await
    .unwrap();
    // What the events mean is `schnell::web::api::StreamEvent`'s (tested
    // natively); here, that they arrive whole.
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.completed"
        ]
    );
    assert_eq!(
        events[0].data,
        "{\"step\":1,\"total_steps\":2,\"b64_json\":\"AA==\"}"
    );
    assert_eq!(events[1].data, "{\"seed\":7,\n\"b64_json\":\"QUJD\"}");
}

#[wasm_bindgen_test]
async fn reading_stops_when_asked() {
    let mut seen = 0;
    read_sse(&streamed(&[STREAM, STREAM]), |_| {
        seen += 1;
        false
    })
    .await
    .unwrap();
    assert_eq!(seen, 1);
}
