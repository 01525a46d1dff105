//! The page's default client, and the free functions that use it.

use std::cell::RefCell;

use super::client::{FetchedFile, HubClient, HubClientBuilder};
use crate::hub::error::HubError;
use crate::hub::file::HubFile;

thread_local! {
    static DEFAULT: RefCell<Option<HubClient>> = const { RefCell::new(None) };
}

fn default_client() -> Result<HubClient, HubError> {
    DEFAULT.with(|slot| {
        if let Some(client) = slot.borrow().as_ref() {
            return Ok(client.clone());
        }
        let client = HubClientBuilder::new().build()?;
        *slot.borrow_mut() = Some(client.clone());
        Ok(client)
    })
}

/// One Hub file through the page's default client (this origin's `/hub`).
pub async fn huggingface_file(file: &HubFile) -> Result<FetchedFile, HubError> {
    default_client()?.file(file).await
}

/// Many Hub files at once, in the order asked.
pub async fn huggingface_files(files: &[HubFile]) -> Result<Vec<FetchedFile>, HubError> {
    default_client()?.files(files).await
}
