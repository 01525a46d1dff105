//! Configs as the Hub's files have them: pretty JSON with a final newline.

/// `value` as pretty JSON with a final newline.
pub(super) fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON values serialise");
    bytes.push(b'\n');
    bytes
}
