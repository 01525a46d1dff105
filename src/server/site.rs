//! Who may call, with or without an API key: the `Host` names this server
//! answers to (so that a DNS-rebinding page, its own name resolving to
//! 127.0.0.1, is refused), and the web pages (`Origin`) that may drive it
//! (so that any page the user visits cannot burn their GPU with a form post
//! or a `text/plain` fetch, which browsers send without asking first).

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api_error::ApiError;

/// Probes answer whatever the name: a load balancer or an orchestrator
/// calls them by whatever name it knows, and they tell nothing valuable.
const ANY_HOST_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// An origin as browsers send it: scheme, host and port (the scheme's own
/// when none is written).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn parse(origin: &str) -> Option<Self> {
        let url = reqwest::Url::parse(origin).ok()?;
        Some(Self {
            scheme: url.scheme().to_string(),
            host: bare_host(url.host_str()?),
            port: url.port_or_known_default(),
        })
    }
}

/// A host name lowercased, without an IPv6 literal's brackets or a final dot.
fn bare_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// The names and pages this server accepts requests from.
#[derive(Debug, Default)]
pub(super) struct Site {
    /// `--allowed-host`s and `--public-url`'s host, bare.
    hosts: Vec<String>,
    any_host: bool,
    /// `--cors-origin`s and `--public-url`'s origin.
    origins: Vec<Origin>,
    any_origin: bool,
}

impl Site {
    /// From the settings; `*` among the hosts or origins allows any.
    pub(super) fn new(
        allowed_hosts: &[String],
        cors_origins: &[String],
        public_url: Option<&str>,
    ) -> Self {
        let public = public_url.and_then(Origin::parse);
        Self {
            any_host: allowed_hosts.iter().any(|h| h == "*"),
            // A port given with a name (`studio.lan:8080`) is not compared.
            hosts: allowed_hosts
                .iter()
                .map(|h| match Authority::from_str(h) {
                    Ok(authority) => bare_host(authority.host()),
                    Err(_) => bare_host(h),
                })
                .chain(public.iter().map(|o| o.host.clone()))
                .collect(),
            any_origin: cors_origins.iter().any(|o| o == "*"),
            origins: cors_origins
                .iter()
                .filter_map(|o| Origin::parse(o))
                .chain(public)
                .collect(),
        }
    }

    /// Names no other machine's page can take: IP literals, `localhost` and
    /// its subdomains (browsers resolve them to loopback themselves), and
    /// those allowed.
    fn host_allowed(&self, host: &str) -> bool {
        let host = bare_host(host);
        self.any_host
            || host.parse::<IpAddr>().is_ok()
            || host == "localhost"
            || host.ends_with(".localhost")
            || self.hosts.contains(&host)
    }

    /// The server's own origin (the request's `Host`, already checked) and
    /// those allowed.
    fn origin_allowed(&self, origin: &str, host: Option<&Authority>) -> bool {
        if self.any_origin {
            return true;
        }
        let Some(origin) = Origin::parse(origin) else {
            return false; // `null` (a sandboxed frame, a file) or garbage
        };
        // The scheme is not compared where the `Host` has a port: only one
        // server answers there. Without one, the server was reached on port
        // 80, which only `http` origins name (a TLS proxy in front has
        // `--public-url`, or `--cors-origin`).
        let own = host.is_some_and(|host| {
            let same_port = match host.port_u16() {
                Some(port) => origin.port == Some(port),
                None => origin.scheme == "http" && origin.port == Some(80),
            };
            bare_host(host.host()) == origin.host && same_port
        });
        own || self.origins.contains(&origin)
    }

    /// Refuses a foreign `Host`, and a request from another site's page.
    fn check(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = match headers.get(header::HOST) {
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| Authority::from_str(v).ok())
                    .ok_or_else(|| {
                        ApiError::foreign_host(&String::from_utf8_lossy(value.as_bytes()))
                    })?,
            ),
            // HTTP/1.0 without a `Host`: not a browser.
            None => uri.authority().cloned(),
        };
        if !ANY_HOST_PATHS.contains(&uri.path()) {
            for name in host.iter().chain(uri.authority()) {
                if !self.host_allowed(name.host()) {
                    return Err(ApiError::foreign_host(name.host()));
                }
            }
        }
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("?"));
        if let Some(origin) = origin {
            if !self.origin_allowed(origin, host.as_ref()) {
                return Err(ApiError::foreign_origin(origin));
            }
        }
        // A page that sent no `Origin` but whose browser says it is another
        // site's: refused where it could do work.
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if cross_site && origin.is_none() && !safe && !self.any_origin {
            return Err(ApiError::cross_site());
        }
        Ok(())
    }
}

/// The middleware: refuses before any work.
pub(super) async fn guard(State(site): State<Arc<Site>>, request: Request, next: Next) -> Response {
    match site.check(request.method(), request.uri(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Whether the body's `Content-Type` is `expected` (a media type, any
/// parameters after it).
pub(super) fn content_type_is(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"));
    let media_type = given.map(|g| g.split(';').next().unwrap_or("").trim());
    match media_type {
        Some(m) if m.eq_ignore_ascii_case(expected) => Ok(()),
        _ => Err(ApiError::media_type(given, expected)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn request(site: &Site, method: Method, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let uri: Uri = path.parse().unwrap();
        site.check(&method, &uri, &map)
            .err()
            .map(|e| e.status.as_u16())
    }

    #[test]
    fn hosts_are_loopback_literals_and_the_names_given() {
        let site = Site::new(
            &["studio.lan:8080".into()],
            &[],
            Some("https://images.example.com/prefix"),
        );
        let get = |host: &str| request(&site, Method::GET, "/v1/models", &[("host", host)]);
        for ok in [
            "localhost",
            "localhost:8080",
            "LocalHost.:8080",
            "app.localhost:1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "192.168.1.20",
            "studio.lan:8080",
            "images.example.com",
        ] {
            assert_eq!(get(ok), None, "{ok}");
        }
        for bad in [
            "attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "images.example.com.evil",
        ] {
            assert_eq!(get(bad), Some(421), "{bad}");
        }
        assert_eq!(
            request(
                &site,
                Method::GET,
                "/readyz",
                &[("host", "attacker.example")]
            ),
            None,
            "probes answer any name"
        );
        assert_eq!(request(&site, Method::GET, "/", &[]), None, "HTTP/1.0");
        let any = Site::new(&["*".into()], &[], None);
        assert_eq!(
            request(&any, Method::GET, "/", &[("host", "anything.example")]),
            None
        );
    }

    #[test]
    fn origins_are_the_servers_own_and_those_allowed() {
        let site = Site::new(
            &[],
            &["http://localhost:8081".into()],
            Some("https://images.example.com"),
        );
        let post = |host: &str, origin: &str| {
            request(
                &site,
                Method::POST,
                "/v1/images/generations",
                &[("host", host), ("origin", origin)],
            )
        };
        assert_eq!(post("127.0.0.1:8080", "http://127.0.0.1:8080"), None);
        // The scheme is not compared: behind a TLS proxy the server cannot
        // know it, and no other server can answer on the same host and port.
        assert_eq!(post("127.0.0.1:8080", "https://127.0.0.1:8080"), None);
        assert_eq!(
            post("localhost", "http://localhost"),
            None,
            "port 80 unwritten"
        );
        assert_eq!(
            post("localhost", "https://localhost"),
            Some(403),
            "another service's TLS page, port 443"
        );
        assert_eq!(
            post("images.example.com", "https://images.example.com"),
            None
        );
        assert_eq!(
            post("127.0.0.1:8080", "https://images.example.com"),
            None,
            "behind a proxy"
        );
        assert_eq!(
            post("127.0.0.1:8080", "http://localhost:8081"),
            None,
            "--cors-origin"
        );
        for bad in [
            "http://attacker.example",
            "http://127.0.0.1:8081",
            "null",
            "http://localhost:8082",
        ] {
            assert_eq!(post("127.0.0.1:8080", bad), Some(403), "{bad}");
        }
        let cross = |method: Method, origin: Option<&str>| {
            let mut headers = vec![("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")];
            headers.extend(origin.map(|o| ("origin", o)));
            request(&site, method, "/v1/images/edits", &headers)
        };
        assert_eq!(cross(Method::POST, None), Some(403));
        assert_eq!(cross(Method::POST, Some("http://localhost:8081")), None);
        assert_eq!(
            cross(Method::GET, None),
            None,
            "a link or an <img> does no work"
        );
    }

    #[test]
    fn content_types_are_compared_as_media_types() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            content_type_is(&h, "application/json").is_ok()
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!with("application/jsonx"));
        assert!(content_type_is(&HeaderMap::new(), "application/json").is_err());
    }
}
