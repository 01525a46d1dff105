//! `schnell mirror`: serves model files over the Hub's resolve protocol.
//!
//! Air-gapped clusters point `HF_ENDPOINT` at it, the browser client fetches
//! tokenizers from it, and the test suite uses it as its Hub. The folder is
//! either `DIR/<org>/<name>/<path>` (any revision answers from that folder) or
//! a Hugging Face cache (exact revisions).

mod range;
mod source;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use tower_http::cors::{Any, CorsLayer};

use self::range::RangeAnswer;
pub use self::source::Layout;
use self::source::{Missing, Source};
use crate::hub::HubFile;

/// The headers a browser client must be allowed to read.
const EXPOSED_HEADERS: [&str; 7] = [
    "x-repo-commit",
    "x-linked-etag",
    "x-linked-size",
    "x-error-code",
    "etag",
    "content-range",
    "accept-ranges",
];

/// A folder of model files, served read-only.
pub struct Mirror {
    source: Source,
    /// When set, only these repositories are served (`org/name`).
    repos: Option<HashSet<String>>,
    /// When set, most files need a key.
    guard: Option<Guard>,
}

/// Says whether a request's headers carry the key.
type Authorize = dyn Fn(&HeaderMap) -> bool + Send + Sync;

/// Files anyone may read; the rest need [`Guard::authorize`].
struct Guard {
    authorize: Box<Authorize>,
    public_json_max: u64,
}

impl Guard {
    /// `*.json` (tokenizers, configs) up to the size cap is public.
    fn public_by_name(path: &str) -> bool {
        Path::new(path)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    }
}

impl Mirror {
    /// Serves `dir`, detecting its layout: a folder holding `models--*`
    /// folders is a Hugging Face cache.
    pub async fn open(dir: &Path) -> io::Result<Self> {
        Self::open_with(dir, None).await
    }

    /// Serves `dir` in the given layout (a cache may still be empty).
    pub async fn open_as(dir: &Path, layout: Layout) -> io::Result<Self> {
        Self::open_with(dir, Some(layout)).await
    }

    async fn open_with(dir: &Path, layout: Option<Layout>) -> io::Result<Self> {
        Ok(Self {
            source: Source::open(dir, layout).await?,
            repos: None,
            guard: None,
        })
    }

    /// Serves only the named repositories; others answer `RepoNotFound`.
    pub fn only_repos(mut self, repos: impl IntoIterator<Item = String>) -> Self {
        self.repos = Some(repos.into_iter().collect());
        self
    }

    /// Serves only `*.json` files of at most `public_json_max` bytes (the
    /// tokenizers and configs a browser reads) to anyone; every other file
    /// answers 401 unless `authorize` accepts the request's headers. Listings
    /// (`/api/models/…`) stay public.
    pub fn require_key(
        mut self,
        authorize: impl Fn(&HeaderMap) -> bool + Send + Sync + 'static,
        public_json_max: u64,
    ) -> Self {
        self.guard = Some(Guard {
            authorize: Box::new(authorize),
            public_json_max,
        });
        self
    }

    /// How the served folder is organised.
    pub fn layout(&self) -> Layout {
        self.source.layout()
    }

    /// The served folder, canonical: no request reaches outside it.
    pub fn root(&self) -> &Path {
        self.source.root()
    }

    /// The routes, with CORS for browsers, ready to be nested or served.
    pub fn router(self: Arc<Self>) -> Router {
        let cors = CorsLayer::new()
            .allow_origin(Any)
            .allow_methods([Method::GET, Method::HEAD])
            .allow_headers([header::RANGE, header::AUTHORIZATION, header::IF_NONE_MATCH])
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static));
        Router::new()
            .route("/{org}/{name}/resolve/{revision}/{*path}", get(resolve))
            .route("/api/models/{org}/{name}", get(model_info))
            .route(
                "/api/models/{org}/{name}/revision/{revision}",
                get(model_info_at),
            )
            .layer(cors)
            .with_state(self)
    }

    fn allows(&self, repo: &str) -> bool {
        self.repos.as_ref().is_none_or(|r| r.contains(repo))
    }
}

/// Binds `addr` and serves until SIGINT or SIGTERM, with the connection cap
/// and timeouts of `schnell serve`. Calls `on_bound` with the real address
/// (useful with port 0).
pub async fn serve(
    mirror: Mirror,
    addr: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    let shutdown = crate::listen::shutdown_signal();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    on_bound(listener.local_addr()?);
    let app = Arc::new(mirror)
        .router()
        .layer(tower_http::trace::TraceLayer::new_for_http());
    crate::listen::serve(
        listener,
        app,
        crate::listen::ServeOptions::default(),
        shutdown,
    )
    .await
}

fn hub_error(status: StatusCode, code: &'static str, message: String) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    response
        .headers_mut()
        .insert("x-error-code", HeaderValue::from_static(code));
    response
}

/// 401 for a file that needs the key.
fn needs_key(file: &HubFile, public_json_max: u64) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": format!(
            "{} in {} needs this server's API key (send `Authorization: Bearer <key>`); \
             without it only *.json files up to {} MiB are served",
            file.path, file.repo, public_json_max >> 20
        ) })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn missing(file: &HubFile, what: Missing) -> Response {
    match what {
        Missing::Repo => hub_error(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            format!("Repository not found: {}", file.repo),
        ),
        Missing::Revision => hub_error(
            StatusCode::NOT_FOUND,
            "RevisionNotFound",
            format!("Invalid rev id: {} in {}", file.revision, file.repo),
        ),
        Missing::Entry => hub_error(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            format!(
                "{} does not exist in {} at {}",
                file.path, file.repo, file.revision
            ),
        ),
    }
}

/// Checks the names in a request; `Err` is the response to send.
fn requested(
    mirror: &Mirror,
    org: &str,
    name: &str,
    revision: &str,
    path: &str,
) -> Result<HubFile, Box<Response>> {
    let file = HubFile::new(format!("{org}/{name}"), path).at_revision(revision);
    if let Err(e) = file.validate() {
        return Err(Box::new(hub_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            e.to_string(),
        )));
    }
    if !mirror.allows(&file.repo) {
        return Err(Box::new(missing(&file, Missing::Repo)));
    }
    Ok(file)
}

async fn resolve(
    State(mirror): State<Arc<Mirror>>,
    method: Method,
    UrlPath((org, name, revision, path)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let file = match requested(&mirror, &org, &name, &revision, &path) {
        Ok(file) => file,
        Err(response) => return *response,
    };
    // By name first, so that without the key nothing says which files exist.
    let authorized = mirror
        .guard
        .as_ref()
        .is_none_or(|g| (g.authorize)(&headers));
    let guard = mirror.guard.as_ref().filter(|_| !authorized);
    if let Some(guard) = guard.filter(|_| !Guard::public_by_name(&file.path)) {
        return needs_key(&file, guard.public_json_max);
    }
    let found = match mirror.source.resolve(&file).await {
        Ok(found) => found,
        Err(what) => return missing(&file, what),
    };
    if let Some(guard) = guard.filter(|g| found.len > g.public_json_max) {
        return needs_key(&file, guard.public_json_max);
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match range::answer(range, found.len) {
        RangeAnswer::Full => (StatusCode::OK, 0, found.len),
        RangeAnswer::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", found.len)).expect("ascii"),
            );
            return response;
        }
    };

    let quoted = format!("\"{}\"", found.etag);
    let mut builder = Response::builder()
        .status(status)
        .header("x-repo-commit", &found.commit)
        .header(header::ETAG, &quoted)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len);
    if found.lfs {
        builder = builder
            .header("x-linked-etag", &quoted)
            .header("x-linked-size", found.len);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", start + len - 1, found.len),
        );
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        match open_range(&found.path, start, len).await {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(path = %found.path.display(), error = %e, "mirror read failed");
                return hub_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ReadError",
                    format!("cannot read {}", file.path),
                );
            }
        }
    };
    builder.body(body).unwrap_or_else(|e| {
        hub_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ResponseError",
            e.to_string(),
        )
    })
}

async fn open_range(path: &Path, start: u64, len: u64) -> io::Result<Body> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(io::SeekFrom::Start(start)).await?;
    Ok(Body::from_stream(ReaderStream::with_capacity(
        f.take(len),
        256 << 10,
    )))
}

async fn model_info(
    State(mirror): State<Arc<Mirror>>,
    UrlPath((org, name)): UrlPath<(String, String)>,
) -> Response {
    info(&mirror, &org, &name, "main").await
}

async fn model_info_at(
    State(mirror): State<Arc<Mirror>>,
    UrlPath((org, name, revision)): UrlPath<(String, String, String)>,
) -> Response {
    info(&mirror, &org, &name, &revision).await
}

/// The fields of the Hub's model API that clients read.
async fn info(mirror: &Mirror, org: &str, name: &str, revision: &str) -> Response {
    let file = match requested(mirror, org, name, revision, "_") {
        Ok(file) => file,
        Err(response) => return *response,
    };
    match mirror.source.list(&file).await {
        Ok((sha, names)) => Json(json!({
            "id": file.repo,
            "modelId": file.repo,
            "sha": sha,
            "private": false,
            "gated": false,
            "siblings": names.iter().map(|n| json!({ "rfilename": n })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(what) => missing(&file, what),
    }
}
