//! An incremental parser for server-sent events, for reading
//! `POST /v1/images/generations` with `stream: true` through fetch streams,
//! where chunk boundaries fall anywhere (inside a line, between `\r` and `\n`).

/// One event: its name (`message` when none was given) and its data lines
/// joined with `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `message` when none was given.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Feed it bytes as they arrive; it returns the events each chunk completes.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of an unfinished line (kept as bytes: a chunk may split a UTF-8 character).
    line: Vec<u8>,
    /// The last chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// A parser that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&String::from_utf8_lossy(&line)) {
                        events.push(event);
                    }
                }
                _ => self.line.push(b),
            }
        }
        events
    }

    /// Handles one complete line; a blank line ends an event.
    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            let data = std::mem::take(&mut self.data);
            if data.is_empty() {
                return None;
            }
            return Some(SseEvent {
                event: event.unwrap_or_else(|| "message".into()),
                data: data.join("\n"),
            });
        }
        if line.starts_with(':') {
            return None; // a comment (keep-alive)
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {} // id, retry: not used here
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "event: image_generation.partial_image\ndata: {\"step\":1}\n\n: keep-alive\n\nevent: image_generation.completed\ndata: {\"a\":\ndata: 2}\n\n";

    #[test]
    fn parses_whole_events() {
        let events = SseParser::new().feed(STREAM.as_bytes());
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "image_generation.partial_image".into(),
                    data: "{\"step\":1}".into()
                },
                SseEvent {
                    event: "image_generation.completed".into(),
                    data: "{\"a\":\n2}".into()
                },
            ]
        );
    }

    #[test]
    fn any_split_gives_the_same_events() {
        let whole = SseParser::new().feed(STREAM.as_bytes());
        let crlf = STREAM.replace('\n', "\r\n");
        for text in [STREAM.to_string(), crlf] {
            let bytes = text.as_bytes();
            for cut in 0..bytes.len() {
                let mut parser = SseParser::new();
                let mut events = parser.feed(&bytes[..cut]);
                events.extend(parser.feed(&bytes[cut..]));
                assert_eq!(events, whole, "split at {cut}");
            }
            // One byte at a time, too.
            let mut parser = SseParser::new();
            let events: Vec<SseEvent> = bytes.iter().flat_map(|b| parser.feed(&[*b])).collect();
            assert_eq!(events, whole);
        }
    }

    #[test]
    fn a_split_utf8_character_survives() {
        let text = "data: café ☕\n\n".as_bytes();
        let mut parser = SseParser::new();
        let mut events = parser.feed(&text[..10]);
        events.extend(parser.feed(&text[10..]));
        assert_eq!(events[0].data, "café ☕");
        assert_eq!(events[0].event, "message");
    }
}
