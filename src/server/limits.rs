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

/// Of those, one client (an IPv4 address or an IPv6 /64) may hold this many,
/// so that a few cannot take them all.
pub const MAX_UPLOADS_PER_CLIENT: usize = 2;

/// Without the API key, `/hub` serves only `*.json` files up to this size
/// (tokenizers and configs, what the web page reads); the rest needs the key.
pub const PUBLIC_HUB_JSON_MAX: u64 = 16 << 20;

/// Without `--image-dir`, `response_format: "url"` images are kept in memory:
/// at most this many, and at most [`MEMORY_IMAGES_BYTES`] (the oldest go
/// first), so that the store levels off whatever the images' sizes.
pub const MEMORY_IMAGES: usize = 256;

/// See [`MEMORY_IMAGES`].
pub const MEMORY_IMAGES_BYTES: usize = 256 << 20;
