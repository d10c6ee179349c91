//! Probe behaviour the conformance scenarios do not cover: with the bottle's CA taken out of
//! its trust, every client fails with a TLS trust error and nothing reaches the upstream. (The
//! scenarios run the probes for passing, blocking, bypass and streaming.)

use anyhow::{Result, ensure};
use bottle::plan::Role;
use bottle_harness::chain::{Chain, ChainOptions};
use bottle_harness::images;
use bottle_harness::probe::{self, Client, ProbeRequest};

#[tokio::test]
async fn untrusted_proxy_ca_is_a_tls_error_for_every_client() -> Result<()> {
    let docker = bottle::docker::connect().await?;
    let images = images::ensure(&docker).await?;
    let chain = Chain::up(&docker, &images, ChainOptions::default()).await?;
    let result = async {
        let mut failures = Vec::new();
        for (client, protocol) in Client::combinations() {
            // Node: its bundled roots only. curl and both Python clients (OpenSSL): another root, alone, and
            // no hashed directory — Debian's curl keeps CApath /etc/ssl/certs (where
            // update-ca-certificates linked the proxy CA) unless SSL_CERT_DIR is set, and it
            // reads only the first of CURL_CA_BUNDLE, SSL_CERT_DIR, SSL_CERT_FILE.
            let other_root = "/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt";
            let request = ProbeRequest::get("https://api.anthropic.com/v1/untrusted")
                .env("NODE_EXTRA_CA_CERTS", None)
                .env("SSL_CERT_FILE", Some(other_root))
                .env("SSL_CERT_DIR", Some("/nonexistent"));
            let r = probe::run(
                chain.docker(),
                chain.id(Role::Agent),
                client,
                protocol,
                &request,
            )
            .await?;
            let error = r.error.clone().unwrap_or_default();
            let trust_error = [
                "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
                "CERTIFICATE_VERIFY_FAILED",
                "SSL certificate problem",
            ]
            .iter()
            .any(|s| error.contains(s));
            if !trust_error || r.status.is_some() {
                failures.push(format!("{client} {protocol}: {r:?}"));
            }
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        let records = chain.upstream_records().await?;
        ensure!(records.is_empty(), "the upstream was reached: {records:?}");
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", chain.logs().await);
    }
    chain.down().await?;
    result
}
