//! The TRAFFIC scenarios' conversations judged by the double in this process, under the config
//! `bottle start` gives the scanner: every size passes, and a secret planted in any shape is
//! blocked. The negative control: under pipelock's default `min_words: 12` the same clean
//! conversations are blocked as a seed phrase, as a real pipelock blocked Claude Code's — so
//! the clean cases pass because of the launcher's choice, not because the scanner is blind.

use std::time::Duration;

use bottle_harness::traffic::{Shape, Traffic, conversation};
use pipelock_double::config::Config;
use pipelock_double::fidelity::{self, Answer, Row};
use pipelock_double::server::{self, Options};

const SIZES: [usize; 3] = [51_200, 512_000, 2_097_152];

async fn start(yaml: &str) -> server::Running {
    pipelock_double::checks::kill_resolver();
    let cfg = Config::from_yaml_str(yaml).expect("the launcher's config loads");
    server::start(
        cfg,
        Options {
            listen: Some("127.0.0.1:0".into()),
            env: Some(Vec::new()),
            ..Default::default()
        },
    )
    .await
    .expect("the double starts")
}

fn launcher_config() -> String {
    bottle::plan::pipelock_config(Some(&["api.anthropic.com".into()]))
}

async fn judge(scanner: &server::Running, traffic: &Traffic) -> Answer {
    let body = String::from_utf8(conversation(traffic)).expect("the conversation is UTF-8");
    let row = Row {
        id: format!("TRAFFIC-{}", traffic.bytes),
        category: "TRAFFIC".into(),
        detector: None,
        method: "POST".into(),
        url: "https://api.anthropic.com/v1/messages?beta=true".into(),
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Anthropic-Version".into(), "2023-06-01".into()),
        ],
        body: Some(body),
        body_base64: None,
        note: None,
    };
    fidelity::send(&scanner.addr.to_string(), &row, Duration::from_secs(60))
        .await
        .expect("the double answers")
}

fn clean(bytes: usize) -> Traffic {
    Traffic {
        bytes,
        secret: None,
        plant_in: None,
        screenshots: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launchers_config_passes_agent_traffic_and_blocks_a_secret_in_every_shape() {
    let scanner = start(&launcher_config()).await;
    for bytes in SIZES {
        let started = std::time::Instant::now();
        let answer = judge(&scanner, &clean(bytes)).await;
        eprintln!("{bytes} bytes judged in {:?}", started.elapsed());
        // 502: allowed, and the fetch upstream failed (no resolver here).
        assert_eq!(answer.status, 502, "{bytes} bytes: {}", answer.body);
    }
    for shape in [
        Shape::Code,
        Shape::Diff,
        Shape::Log,
        Shape::Lockfile,
        Shape::Prose,
    ] {
        let traffic = Traffic {
            bytes: 512_000,
            secret: Some("AKIAZ7VQ4HX2LMN3PQRS".into()),
            plant_in: Some(shape),
            screenshots: false,
        };
        let answer = judge(&scanner, &traffic).await;
        assert_eq!(answer.status, 403, "{shape:?}: {}", answer.body);
        assert!(
            answer
                .body
                .starts_with("blocked: request body contains secret: AWS Access ID"),
            "{shape:?}: {}",
            answer.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pipelocks_default_min_words_the_same_traffic_is_a_seed_phrase() {
    let config = launcher_config();
    assert!(config.contains("min_words: 24"), "{config}");
    let scanner = start(&config.replace("min_words: 24", "min_words: 12")).await;
    for bytes in SIZES {
        let answer = judge(&scanner, &clean(bytes)).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (
                403,
                "blocked: request body contains secret: BIP-39 Seed Phrase\n"
            ),
            "{bytes} bytes"
        );
    }
}

/// pipelock matches every DLP pattern case-insensitively (`(?i)` before each, scanner.go), so
/// random base64 — a PNG screenshot — holds an "AWS Access ID" (`a3t` or `asia`, then 16
/// letters or digits) about every 40 KB. A fact of the scanner, not of the chain: the chain
/// cannot lift it without judging other bytes than it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_with_screenshots_is_an_aws_key_to_pipelock() {
    let scanner = start(&launcher_config()).await;
    let traffic = Traffic {
        screenshots: true,
        ..clean(512_000)
    };
    let answer = judge(&scanner, &traffic).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer
            .body
            .starts_with("blocked: request body contains secret: AWS Access ID"),
        "{}",
        answer.body
    );
}
