//! The native backend: tokio, reqwest and the standard Hugging Face cache.
//!
//! A batch of files goes in two steps ([`batch`]). First every file is
//! looked up in the cache ([`cache_check`]: zero requests on a hit whose
//! size is known to be right) and the rest are asked about with one `HEAD`
//! each. Then the missing ones download at once ([`download`]), their byte
//! ranges sharing one budget of connections sized to the link
//! ([`connections`], [`transfer`]); each file is downloaded by at most one
//! task of this process ([`claim`]) and one process at a time, verified
//! against its ETag, and only then renamed into the cache. [`verify`]
//! re-checks what the cache holds.
//!
//! [`client`] holds the client's shared state; each step adds its methods
//! in its own module, and every module imports its siblings directly.

mod batch;
mod builder;
pub(crate) mod cache;
mod cache_check;
mod claim;
mod client;
mod connections;
mod damage;
mod default_client;
mod download;
mod fetched;
mod partial;
mod prefix_hash;
mod remote;
mod token;
mod transfer;
mod verify;

pub use self::builder::HubClientBuilder;
pub use self::client::HubClient;
pub use self::default_client::{default_client, huggingface_file, huggingface_files};
pub use self::fetched::FetchedFile;
pub use self::verify::Verification;
