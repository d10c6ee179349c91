//! `bottle start --dry-run` output, text and JSON, against golden files: a change to what a bottle
//! is shows up here as a diff to review. `BOTTLE_BLESS=1 cargo nextest run -p bottle dry_run`
//! rewrites the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bottle::plan::{
    self, AgentSpec, BottlePlan, BottleSpec, CredentialBinding, DEFAULT_ALLOWLIST, EgressSpec,
    ScannerKind, ScannerSpec, UpstreamCa,
};
use bottle::render;

const SECRET: &str = "sk-ant-api03-golden-secret-never-printed";

fn golden_plan(scanner: ScannerKind) -> BottlePlan {
    let spec = BottleSpec {
        name: "demo".into(),
        agent: AgentSpec {
            image: "bottle-agent-claude:0123456789abcdef".into(),
            command: vec!["claude".into()],
            env: BTreeMap::from([
                ("TZ".into(), "UTC".into()),
                ("ANTHROPIC_API_KEY".into(), SECRET.into()),
            ]),
            secret_env: BTreeSet::from(["ANTHROPIC_API_KEY".into()]),
            limits: Default::default(),
        },
        scanner: match scanner {
            ScannerKind::Pipelock => ScannerSpec {
                kind: scanner,
                image: "ghcr.io/luckypipewrench/pipelock@sha256:2e6caa43967a5ef19cacbce00188d829c1b5de1eb0ad304a51d2085f32c5694c".into(),
                entrypoint: None,
            },
            ScannerKind::Double => ScannerSpec {
                kind: scanner,
                image: "bottle-fixtures:fedcba9876543210".into(),
                entrypoint: Some(vec!["pipelock-double".into()]),
            },
        },
        mitm_image: "bottle-mitmproxy:0123456789abcdef".into(),
        addon_dir: None,
        egress: EgressSpec {
            network: None,
            allowlist: DEFAULT_ALLOWLIST.map(String::from).to_vec(),
            any_host: false,
            upstream_ca: Some(UpstreamCa {
                source: "/home/me/project/corp-proxy-ca.pem".into(),
                pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            }),
            ssrf_allow: vec![],
        },
        credentials: vec![CredentialBinding {
            host: "api.anthropic.com".into(),
            header: "x-api-key".into(),
            env: "ANTHROPIC_API_KEY".into(),
            scheme: None,
        }],
        test_verdict_allow: false,
    };
    plan::plan(&spec).unwrap()
}

fn check_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("BOTTLE_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; BOTTLE_BLESS=1 writes it", path.display()));
    assert!(
        expected == actual,
        "{} differs from the output (BOTTLE_BLESS=1 rewrites it after review):\n{actual}",
        path.display()
    );
}

#[test]
fn the_text_dry_run_matches_its_golden_file() {
    check_golden(
        "dry-run.txt",
        &render::text(&golden_plan(ScannerKind::Pipelock)),
    );
}

#[test]
fn the_json_dry_run_matches_its_golden_file() {
    check_golden(
        "dry-run.json",
        &render::json(&golden_plan(ScannerKind::Pipelock)),
    );
}

#[test]
fn the_double_dry_run_matches_its_golden_file_and_warns() {
    let text = render::text(&golden_plan(ScannerKind::Double));
    assert!(text.contains(render::DOUBLE_WARNING), "{text}");
    check_golden("dry-run-double.txt", &text);
}

/// The PRD's contract: `egress.mitm` is reserved with a null fingerprint at dry run, and every
/// container, network and env var is in the JSON, secrets redacted.
#[test]
fn the_json_shows_every_container_network_and_env_var_and_no_secret() {
    let plan = golden_plan(ScannerKind::Pipelock);
    let json: serde_json::Value = serde_json::from_str(&render::json(&plan)).unwrap();
    assert_eq!(
        json["egress"]["mitm"],
        serde_json::json!({"enabled": true, "ca_fingerprint": null})
    );
    for (i, container) in plan.containers.iter().enumerate() {
        let shown = &json["containers"][i];
        assert_eq!(shown["name"], container.name.as_str());
        assert_eq!(shown["image"], container.image.as_str());
        for key in container.env.keys() {
            assert!(
                shown["env"].get(key).is_some(),
                "{} env {key}",
                container.name
            );
        }
    }
    for (i, network) in plan.networks.iter().enumerate() {
        assert_eq!(json["networks"][i]["name"], network.name.as_str());
    }
    let text = render::text(&plan);
    for output in [json.to_string(), text.clone()] {
        assert!(!output.contains(SECRET), "a secret was printed:\n{output}");
    }
    // The secret is in the plan that runs (mitmproxy's and the agent's env), only redacted.
    assert!(
        plan.containers
            .iter()
            .any(|c| c.env.values().any(|v| v == SECRET))
    );
    for container in &plan.containers {
        for key in container.env.keys() {
            assert!(
                text.contains(&format!("env:        {key}=")),
                "{key} not in text"
            );
        }
    }
}
