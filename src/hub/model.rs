use std::future::Future;

use super::error::HubError;
use super::file::HubFile;
use super::native::{default_client, FetchedFile, HubClient};

/// What model code uses to get its files; it never touches a download client.
///
/// A model overrides [`HubModel::hub`] to use a configured client (a mirror, a
/// progress sink); the defaults go through the process-wide client.
pub trait HubModel: Sync {
    /// The client this model fetches through.
    fn hub(&self) -> Result<HubClient, HubError> {
        default_client()
    }

    /// One file of `repo` at `main`.
    fn huggingface_file(
        &self,
        repo: &str,
        file: &str,
    ) -> impl Future<Output = Result<FetchedFile, HubError>> + Send {
        let client = self.hub();
        let file = HubFile::new(repo, file);
        async move { client?.file(&file).await }
    }

    /// Many files, fetched concurrently, in the order asked.
    fn huggingface_files(
        &self,
        files: &[HubFile],
    ) -> impl Future<Output = Result<Vec<FetchedFile>, HubError>> + Send {
        let client = self.hub();
        let files = files.to_vec();
        async move { client?.files(&files).await }
    }
}
