//! The server's own limits on bodies and uploads; what one request may ask
//! for is `crate::limits` and `crate::protocol`'s.

/// Request bodies above this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// An edit's body (its image and mask) above this is refused with 413:
/// OpenAI's limit for an image.
pub const MAX_EDIT_BODY: usize = 50 << 20;

/// Edits whose bodies are read and decoded at once; more get 429. Apart
/// from the queue, so that slow uploads never hold its places, and few, so
/// that their bodies and decoded images stay within a few hundred MB.
pub const MAX_UPLOADS: usize = 4;

/// Without the API key, `/hub` serves only `*.json` files up to this size
/// (tokenizers and configs, what the web page reads); the rest needs the key.
pub const PUBLIC_HUB_JSON_MAX: u64 = 16 << 20;
