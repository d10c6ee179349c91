//! A small HTTPS client for the Debian archive, so the host needs no debootstrap, curl or wget.
//!
//! Trust comes from the host's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured, as for
//! every other fetch here), so a network that intercepts TLS with its own CA works as on the host.
//! An https URL goes through the proxy `HTTPS_PROXY` names (`NO_PROXY` honoured), as curl's would.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One GET may take this long, body included: the largest Debian package here is ~15 MB.
const GET_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_REDIRECTS: usize = 5;
/// Tries of one GET in all, 1 s then 2 s apart.
const ATTEMPTS: u32 = 3;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP to the destination, or a CONNECT tunnel through the environment's proxy for https.
#[derive(Clone)]
struct ProxyAware {
    direct: HttpConnector,
    proxies: Arc<Matcher>,
}

impl tower_service::Service<Uri> for ProxyAware {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut direct = self.direct.clone();
        let proxy = (dst.scheme_str() == Some("https"))
            .then(|| self.proxies.intercept(&dst))
            .flatten();
        match proxy {
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { tunnel.call(dst).await.map_err(Into::into) })
            }
            None => Box::pin(async move { direct.call(dst).await.map_err(Into::into) }),
        }
    }
}

#[derive(Clone)]
pub struct Http {
    client: Client<hyper_rustls::HttpsConnector<ProxyAware>, Empty<Bytes>>,
}

impl Http {
    pub fn new() -> Result<Self, String> {
        let mut direct = HttpConnector::new();
        direct.enforce_http(false);
        let inner = ProxyAware {
            direct,
            proxies: Arc::new(Matcher::from_env()),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("reading the host's CA certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(inner);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Http { client })
    }

    /// The body of `url`, following redirects; any status but 2xx is an error.
    /// A network error, a timeout or a 5xx/429 is tried again (as pip and debootstrap did), up
    /// to [`ATTEMPTS`] times in all; anything else fails at once.
    pub async fn get(&self, url: &str) -> Result<Bytes, String> {
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout(GET_TIMEOUT, self.get_following(url))
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::transient(format!(
                        "GET {url}: no answer within {}s",
                        GET_TIMEOUT.as_secs()
                    )))
                });
            match result {
                Ok(body) => return Ok(body),
                Err(failure) if failure.transient && attempt < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                    attempt += 1;
                }
                Err(failure) if attempt > 1 => {
                    return Err(format!("{} (tried {attempt} times)", failure.message));
                }
                Err(failure) => return Err(failure.message),
            }
        }
    }

    async fn get_following(&self, url: &str) -> Result<Bytes, Failure> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| Failure::permanent(format!("{url}: {e}")))?;
            let request = hyper::Request::get(uri)
                .header(hyper::header::USER_AGENT, "bottle-image-builder")
                .body(Empty::new())
                .map_err(|e| Failure::permanent(format!("{url}: {e}")))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| Failure::transient(format!("GET {url}: {}", error_chain(&e))))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        Failure::permanent(format!("GET {url}: {status} without a Location"))
                    })?;
                url = resolve(&url, location);
                continue;
            }
            if !status.is_success() {
                let message = format!("GET {url}: {status}");
                return Err(match status.is_server_error() || status.as_u16() == 429 {
                    true => Failure::transient(message),
                    false => Failure::permanent(message),
                });
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure::transient(format!("GET {url}: reading the body: {e}")))?;
            return Ok(body.to_bytes());
        }
        Err(Failure::permanent(format!(
            "GET {url}: more than {MAX_REDIRECTS} redirects"
        )))
    }
}

/// Why a GET failed, and whether trying again may help.
struct Failure {
    message: String,
    transient: bool,
}

impl Failure {
    fn transient(message: String) -> Self {
        Failure {
            message,
            transient: true,
        }
    }

    fn permanent(message: String) -> Self {
        Failure {
            message,
            transient: false,
        }
    }
}

/// A Location may be absolute or a path on the same origin.
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    format!("{}{}", &base[..origin_end], location)
}

/// hyper's errors say "client error (Connect)"; the cause (DNS, refused, certificate) is below.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_location_stays_on_the_origin() {
        assert_eq!(
            resolve("https://a.example/x/y", "/z"),
            "https://a.example/z"
        );
        assert_eq!(
            resolve("https://a.example/x", "http://b.example/q"),
            "http://b.example/q"
        );
    }
}
