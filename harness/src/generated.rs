//! Generated parity (P10): requests of many shapes — method, path, query, headers, a JSON, form,
//! multipart, text or binary body, Content-Length or chunked, h1 or h2, any HTTP client — with a
//! credential planted at a random place in a random encoding, or none. Each runs as a PARITY
//! case (`parity::check`): the chain must decide what the scanner decides on the same request
//! in plaintext (`tests/parity_generated.rs` runs them with proptest, which shrinks a failure
//! to a smallest request and writes it as a scenario file).

use base64::Engine;
use proptest::prelude::*;
use serde::Serialize;

use crate::corpus::CorpusInfo;
use crate::scenario::{
    BottleOptions, Client, Expect, Property, Protocol, Request, Scenario, ScenarioError,
};

/// How many requests the lane sends (default [`DEFAULT_CASES`]); raise it for a long run.
pub const CASES_ENV: &str = "BOTTLE_PARITY_CASES";
/// What the normal run sends: about a minute on 2 cores.
pub const DEFAULT_CASES: u32 = 24;
/// The lane's fixed seed: the same requests on every run, so a failure is found again.
pub const SEED: [u8; 32] = *b"bottle parity: the chain = plain";
/// The one host of the lane (the upstream answers for it).
pub const HOST: &str = "api.parity.example.com";

/// Credentials the scanner knows, one per detector family.
const SECRETS: [&str; 4] = [
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_0123456789abcdefghijABCDEFGHIJ0123456789",
    "sk-ant-api03-Xy7Kp2Lm9Qr4St6Uv8Wx0Yz1Ab3Cd5Ef7Gh9Ij",
    "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Json,
    Form,
    Multipart,
    Text,
    Binary,
}

/// How the credential is written, which also says where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// As is, in a body field (or the query when there is no body).
    Plain,
    /// Every byte percent-encoded, in the query.
    UrlEncoded,
    /// Base64, in a body field (or the query).
    Base64,
    /// Split in two JSON string fields (the body becomes JSON).
    SplitJson,
    /// The content of a multipart part (the body becomes multipart).
    MultipartPart,
    /// A header's value.
    Header,
}

#[derive(Clone, Debug)]
pub struct Plant {
    pub secret: &'static str,
    pub encoding: Encoding,
}

/// One generated request and the client that sends it.
#[derive(Clone, Debug)]
pub struct Generated {
    pub client: Client,
    pub protocol: Protocol,
    pub method: &'static str,
    pub path: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: BodyKind,
    pub fields: Vec<(String, String)>,
    pub binary: Vec<u8>,
    /// Chunked framing (h1, the clients that frame a body so when asked: curl and Node).
    pub chunked: bool,
    pub plant: Option<Plant>,
}

fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,7}"
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9 ._-]{0,23}".prop_map(|s| s.trim().to_string())
}

/// Every request shape, shrinking towards a bodyless GET by curl over h1 with nothing planted.
pub fn strategy() -> impl Strategy<Value = Generated> {
    let sender = prop_oneof![
        Just((Client::Curl, Protocol::H1)),
        Just((Client::Curl, Protocol::H2)),
        Just((Client::Node, Protocol::H1)),
        Just((Client::Node, Protocol::H2)),
        Just((Client::Python, Protocol::H1)),
        Just((Client::Python, Protocol::H2)),
        Just((Client::PythonStdlib, Protocol::H1)),
    ];
    let method = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("PATCH"),
        Just("DELETE")
    ];
    let body = prop_oneof![
        Just(BodyKind::None),
        Just(BodyKind::Json),
        Just(BodyKind::Form),
        Just(BodyKind::Multipart),
        Just(BodyKind::Text),
        Just(BodyKind::Binary),
    ];
    let encoding = prop_oneof![
        Just(Encoding::Plain),
        Just(Encoding::UrlEncoded),
        Just(Encoding::Base64),
        Just(Encoding::SplitJson),
        Just(Encoding::MultipartPart),
        Just(Encoding::Header),
    ];
    let plant =
        proptest::option::of(
            (0..SECRETS.len(), encoding).prop_map(|(i, encoding)| Plant {
                secret: SECRETS[i],
                encoding,
            }),
        );
    let header = ("X-[A-Z][a-z]{2,8}", text());
    (
        sender,
        method,
        proptest::collection::vec(word(), 0..3),
        proptest::collection::vec((word(), text()), 0..3),
        proptest::collection::vec(header, 0..3),
        body,
        proptest::collection::vec((word(), text()), 1..4),
        proptest::collection::vec(any::<u8>(), 0..48),
        any::<bool>(),
        plant,
    )
        .prop_map(
            |(
                (client, protocol),
                method,
                path,
                query,
                headers,
                body,
                fields,
                binary,
                chunked,
                plant,
            )| {
                let mut g = Generated {
                    client,
                    protocol,
                    method,
                    path,
                    query,
                    headers,
                    body,
                    fields,
                    binary,
                    chunked,
                    plant,
                };
                g.normalise();
                g
            },
        )
}

impl Generated {
    /// What the planted encoding needs of the body, and chunked only where it can be sent.
    fn normalise(&mut self) {
        match self.plant.as_ref().map(|p| p.encoding) {
            Some(Encoding::SplitJson) => self.body = BodyKind::Json,
            Some(Encoding::MultipartPart) => self.body = BodyKind::Multipart,
            _ => {}
        }
        // Names given twice would be one header to some clients and two to others.
        let mut seen = std::collections::BTreeSet::new();
        self.headers
            .retain(|(name, _)| seen.insert(name.to_ascii_lowercase()));
        self.chunked &= self.protocol == Protocol::H1
            && matches!(self.client, Client::Curl | Client::Node)
            && self.body != BodyKind::None;
    }

    /// The request: the credential written where and as its encoding says.
    pub fn request(&self) -> Request {
        let mut fields = self.fields.clone();
        // Values as they go in the URL: form-encoded, or as the plant's encoding wrote them.
        let mut query: Vec<(String, String)> = self
            .query
            .iter()
            .map(|(k, v)| (k.clone(), form(v)))
            .collect();
        let mut headers: Vec<(String, String)> = self.headers.clone();
        let mut raw_secret: Option<Vec<u8>> = None;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        if let Some(plant) = &self.plant {
            let in_body_or_query =
                |value: String,
                 fields: &mut Vec<(String, String)>,
                 query: &mut Vec<(String, String)>| {
                    match self.body {
                        BodyKind::None => query.push(("token".into(), form(&value))),
                        _ => fields.push(("token".into(), value)),
                    }
                };
            match plant.encoding {
                Encoding::Plain => {
                    in_body_or_query(plant.secret.to_string(), &mut fields, &mut query);
                    raw_secret = Some(plant.secret.as_bytes().to_vec());
                }
                Encoding::Base64 => {
                    in_body_or_query(b64(plant.secret), &mut fields, &mut query);
                    raw_secret = Some(b64(plant.secret).into_bytes());
                }
                Encoding::UrlEncoded => query.push(("token".into(), percent_all(plant.secret))),
                Encoding::SplitJson => {
                    let (a, b) = plant.secret.split_at(plant.secret.len() / 2);
                    fields.push(("key_a".into(), a.into()));
                    fields.push(("key_b".into(), b.into()));
                }
                Encoding::MultipartPart => fields.push(("upload".into(), plant.secret.into())),
                Encoding::Header => headers.push(("X-Token".into(), plant.secret.into())),
            }
        }
        let (content_type, body) = self.body_bytes(&fields, raw_secret.as_deref());
        if let Some(content_type) = content_type {
            headers.push(("Content-Type".into(), content_type));
        }
        if self.chunked {
            headers.push(("Transfer-Encoding".into(), "chunked".into()));
        }
        let mut url = format!("https://{HOST}/{}", self.path.join("/"));
        if !query.is_empty() {
            let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            url = format!("{url}?{}", pairs.join("&"));
        }
        Request {
            headers: headers.into_iter().collect(),
            body_base64: body.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            ..Request::new(self.method, &url)
        }
    }

    fn body_bytes(
        &self,
        fields: &[(String, String)],
        raw_secret: Option<&[u8]>,
    ) -> (Option<String>, Option<Vec<u8>>) {
        match self.body {
            BodyKind::None => (None, None),
            BodyKind::Json => {
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect();
                (
                    Some("application/json".into()),
                    Some(serde_json::to_vec(&object).expect("JSON")),
                )
            }
            BodyKind::Form => {
                let pairs: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{k}={}", form(v)))
                    .collect();
                (
                    Some("application/x-www-form-urlencoded".into()),
                    Some(pairs.join("&").into_bytes()),
                )
            }
            BodyKind::Multipart => {
                let boundary = "----bottleParityBoundary";
                let mut body = String::new();
                for (k, v) in fields {
                    body += &format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                    );
                }
                body += &format!("--{boundary}--\r\n");
                (
                    Some(format!("multipart/form-data; boundary={boundary}")),
                    Some(body.into_bytes()),
                )
            }
            BodyKind::Text => {
                let lines: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                (
                    Some("text/plain".into()),
                    Some(lines.join("\n").into_bytes()),
                )
            }
            BodyKind::Binary => {
                let mut bytes = self.binary.clone();
                if let Some(secret) = raw_secret {
                    bytes.extend_from_slice(secret);
                }
                (Some("application/octet-stream".into()), Some(bytes))
            }
        }
    }

    /// The PARITY scenario that sends this request from its client.
    pub fn scenario(&self) -> Scenario {
        use sha2::Digest;
        let request = self.request();
        let described = format!("{:?} {:?} {:?}", self.client, self.protocol, request);
        let id = hex::encode(&sha2::Sha256::digest(described.as_bytes())[..5]);
        let planted = match &self.plant {
            Some(p) => format!("a credential, {:?}", p.encoding),
            None => "no credential".into(),
        };
        Scenario {
            id: format!("PARITY-gen-{id}"),
            title: format!(
                "generated: {} with {}{}, {planted}",
                self.method,
                match self.body {
                    BodyKind::None => "no body".to_string(),
                    kind => format!("a {kind:?} body"),
                },
                if self.chunked { " (chunked)" } else { "" }
            ),
            property: Property::P10,
            clients: vec![self.client],
            protocols: vec![self.protocol],
            needs: Default::default(),
            class: None,
            technique: None,
            unimplemented: None,
            not_applicable: None,
            corpus: Some(CorpusInfo {
                file: "harness/src/generated.rs".into(),
                category: "generated".into(),
                expected_verdict: String::new(),
            }),
            request: Some(request),
            upstream: None,
            bottle: Some(BottleOptions {
                any_host: chain_options().any_host,
                upstream_hosts: chain_options().upstream_hosts,
                ..BottleOptions::default()
            }),
            faults: Vec::new(),
            expect: Expect {
                parity: true,
                ..Expect::default()
            },
            source: "harness/src/generated.rs".into(),
        }
    }
}

/// What the lane found: the first disagreement's failures, and the smallest request that still
/// disagrees (proptest's shrinking), as a scenario.
pub struct Disagreement {
    pub why: String,
    pub smallest: Scenario,
}

/// Sends `cases` generated requests (the fixed seed) through `chain`, a bottle with
/// [`chain_options`] (reset before each); each result goes to the report when `record`. Ok(None):
/// every request got the scanner's verdict through the chain.
pub fn run_lane(
    runtime: &tokio::runtime::Runtime,
    chain: &mut crate::chain::Chain,
    cases: u32,
    record: bool,
) -> anyhow::Result<Option<Disagreement>> {
    use crate::report::{CaseResult, Outcome};
    use proptest::test_runner::{
        Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
    };
    let scanner = runtime
        .block_on(crate::images::ensure(chain.docker()))?
        .graded
        .scanner_label();
    let chain = std::cell::RefCell::new(chain);
    let config = Config {
        cases,
        // Each shrinking step is a request through the bottle: bounded.
        max_shrink_iters: 24,
        failure_persistence: None,
        ..Config::default()
    };
    let mut proptest =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let outcome = proptest.run(&strategy(), |g| {
        let s = g.scenario();
        let case = crate::scenario::expand(std::slice::from_ref(&s))
            .into_iter()
            .next()
            .expect("a generated scenario has one client and one protocol");
        let t0 = std::time::Instant::now();
        let run = runtime.block_on(crate::runner::execute_on(&case, &mut chain.borrow_mut()));
        let (failures, evidence) = run.map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        if record {
            let outcome = match failures.is_empty() {
                true => Outcome::Pass,
                false => Outcome::Fail,
            };
            let reason = (!failures.is_empty()).then(|| failures.join("; "));
            let mut result = CaseResult::new(&case, outcome, reason);
            result.duration_ms = t0.elapsed().as_millis() as u64;
            result.evidence = evidence;
            result.scanner = scanner.clone();
            if let Err(e) = crate::report::record(&result) {
                eprintln!("writing the report failed: {e}");
            }
        }
        match failures.is_empty() {
            true => Ok(()),
            false => Err(TestCaseError::fail(failures.join("; "))),
        }
    });
    match outcome {
        Ok(()) => Ok(None),
        Err(TestError::Fail(why, smallest)) => Ok(Some(Disagreement {
            why: why.to_string(),
            smallest: smallest.scenario(),
        })),
        Err(TestError::Abort(why)) => anyhow::bail!("the generated parity lane stopped: {why}"),
    }
}

/// The bottle of every generated request (the options its scenarios ask for).
pub fn chain_options() -> crate::chain::ChainOptions {
    crate::chain::ChainOptions {
        any_host: true,
        upstream_hosts: vec![HOST.into()],
        ..Default::default()
    }
}

/// `value` percent-encoded as a form or query value.
fn form(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            b' ' => "+".into(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Every byte of `value` percent-encoded.
fn percent_all(value: &str) -> String {
    value.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// A scenario file holding `scenario` (a regression the lane found), as the loader reads it.
pub fn scenario_file(scenario: &Scenario) -> Result<String, ScenarioError> {
    #[derive(Serialize)]
    struct File<'a> {
        scenario: [&'a Scenario; 1],
    }
    let text = toml::to_string(&File {
        scenario: [scenario],
    })
    .map_err(|e| ScenarioError::Invalid {
        path: scenario.source.clone(),
        id: scenario.id.clone(),
        problem: e.to_string(),
    })?;
    Ok(format!(
        "# Found by the generated parity lane (tests/parity_generated.rs), shrunk: the chain\n\
         # and the scanner in plaintext did not agree on this request. Kept as a regression.\n{text}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};

    fn sample(n: usize) -> Vec<Generated> {
        let mut runner = TestRunner::new_with_rng(
            Default::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &SEED),
        );
        (0..n)
            .map(|_| strategy().new_tree(&mut runner).unwrap().current())
            .collect()
    }

    #[test]
    fn every_generated_request_is_a_valid_scenario_that_survives_its_file() {
        for g in sample(200) {
            let s = g.scenario();
            assert!(
                crate::scenario::validate(&s).is_empty(),
                "{s:?}: {:?}",
                crate::scenario::validate(&s)
            );
            let text = scenario_file(&s).unwrap();
            let back = crate::scenario::parse_str(&text, std::path::Path::new("x.toml")).unwrap();
            assert_eq!(back[0].request, s.request, "{text}");
            assert!(g.client.supports(g.protocol));
        }
    }

    #[test]
    fn the_fixed_seed_covers_every_shape_and_every_encoding() {
        let all = sample(DEFAULT_CASES as usize * 4);
        let same = sample(5);
        assert_eq!(
            format!("{:?}", &all[..5]),
            format!("{same:?}"),
            "the seed is fixed"
        );
        for kind in [
            BodyKind::None,
            BodyKind::Json,
            BodyKind::Form,
            BodyKind::Multipart,
            BodyKind::Text,
            BodyKind::Binary,
        ] {
            assert!(all.iter().any(|g| g.body == kind), "{kind:?}");
        }
        for encoding in [
            Encoding::Plain,
            Encoding::UrlEncoded,
            Encoding::Base64,
            Encoding::SplitJson,
            Encoding::MultipartPart,
            Encoding::Header,
        ] {
            assert!(
                all.iter()
                    .any(|g| g.plant.as_ref().is_some_and(|p| p.encoding == encoding)),
                "{encoding:?}"
            );
        }
        assert!(all.iter().any(|g| g.plant.is_none()));
        assert!(all.iter().any(|g| g.chunked));
    }

    #[test]
    fn a_planted_credential_is_in_the_request_as_its_encoding_says() {
        let mut g = sample(1).remove(0);
        g.body = BodyKind::Json;
        g.plant = Some(Plant {
            secret: SECRETS[0],
            encoding: Encoding::Base64,
        });
        let request = g.request();
        let body = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(request.body_base64.unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(body.contains(&base64::engine::general_purpose::STANDARD.encode(SECRETS[0])));
        g.plant = Some(Plant {
            secret: SECRETS[0],
            encoding: Encoding::UrlEncoded,
        });
        assert!(g.request().url.contains("token=%41%4B%49%41"));
        g.plant = Some(Plant {
            secret: SECRETS[1],
            encoding: Encoding::Header,
        });
        assert_eq!(g.request().headers["X-Token"], SECRETS[1]);
    }
}
