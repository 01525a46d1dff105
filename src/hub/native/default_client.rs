//! The process-wide client, and the free functions that use it.

use std::sync::OnceLock;

use super::client::HubClient;
use super::fetched::FetchedFile;
use crate::hub::error::HubError;
use crate::hub::file::HubFile;

/// The process-wide client, configured from the environment on first use.
pub fn default_client() -> Result<HubClient, HubError> {
    static CLIENT: OnceLock<Result<HubClient, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| HubClient::from_env().map_err(|e| e.to_string()))
        .clone()
        .map_err(HubError::Config)
}

/// One Hub file through the process-wide client.
pub async fn huggingface_file(file: &HubFile) -> Result<FetchedFile, HubError> {
    default_client()?.file(file).await
}

/// Many Hub files at once through the process-wide client, in the order asked.
pub async fn huggingface_files(files: &[HubFile]) -> Result<Vec<FetchedFile>, HubError> {
    default_client()?.files(files).await
}
