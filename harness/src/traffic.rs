//! What a coding agent sends: a multi-turn Messages API conversation, resent whole each turn,
//! of a requested size. Its turns read code, diffs, build and test logs and a lockfile, taken
//! from this repository's own files, so the text is real code and prose, not filler; and, when
//! asked, screenshots (base64 PNG). Deterministic: the same size gives the same bytes.
//!
//! A secret can be planted in one shape (code, diff, log, lockfile, prose) of the last turn:
//! the end of the largest body, where a scanner that stops early would miss it.
//!
//! A file below that gains a secret-shaped string makes the clean TRAFFIC cases fail, rightly:
//! the scanner would block such an agent too.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const PROSE: [&str; 2] = [
    include_str!("../../README.md"),
    include_str!("../../addon/README.md"),
];
const CODE: [(&str, &str); 2] = [
    (
        "launcher/src/executor.rs",
        include_str!("../../launcher/src/executor.rs"),
    ),
    (
        "addon/bottle_addon/scanner.py",
        include_str!("../../addon/bottle_addon/scanner.py"),
    ),
];
const LOCKFILE: &str = include_str!("../../Cargo.lock");
/// Room left for the turn that carries a planted secret (the lockfile's turn is the largest).
const LAST_TURN_ROOM: usize = 128 * 1024;

/// Where in the conversation a secret is planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Code,
    Diff,
    Log,
    Lockfile,
    Prose,
}

/// The scenario's `agent_traffic`: a conversation of at least `bytes`, a secret optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    pub bytes: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plant_in: Option<Shape>,
    /// Every sixth turn reads a screenshot (48 KB of PNG as base64) instead of text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub screenshots: bool,
}

/// A small deterministic generator (xorshift64*): ids and image bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn id(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let tail: String = (0..22)
            .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize] as char)
            .collect();
        format!("{prefix}{tail}")
    }
}

/// Paragraphs of the prose files, in order.
fn paragraphs() -> Vec<&'static str> {
    PROSE
        .iter()
        .flat_map(|text| text.split("\n\n"))
        .map(str::trim)
        .filter(|p| p.len() > 80 && !p.starts_with("```") && !p.starts_with('|'))
        .collect()
}

/// A unified diff of `text` (named `path`): a few lines changed in each of a few hunks.
fn diff(path: &str, text: &str, turn: usize, planted: Option<&str>) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = format!(
        "diff --git a/{path} b/{path}\nindex 3f2a9c1..8b7e4d0 100644\n--- a/{path}\n+++ b/{path}\n"
    );
    let step = (lines.len() / 4).max(8);
    for (n, start) in (turn % step..lines.len().saturating_sub(7))
        .step_by(step)
        .enumerate()
    {
        out.push_str(&format!("@@ -{},7 +{},7 @@\n", start + 1, start + 1));
        for (i, line) in lines[start..start + 7].iter().enumerate() {
            if i == 3 {
                out.push_str(&format!("-{line}\n+{}  // reviewed\n", line.trim_end()));
            } else {
                out.push_str(&format!(" {line}\n"));
            }
        }
        if n == 0
            && let Some(secret) = planted
        {
            out.push_str(&format!("+    let deploy_key = \"{secret}\";\n"));
        }
    }
    out
}

/// A `cargo test` log over the lockfile's crates and the code's test names.
fn log(turn: usize, planted: Option<&str>) -> String {
    let mut out = String::new();
    let packages = LOCKFILE
        .split("[[package]]")
        .filter_map(|p| {
            let name = p.split("name = \"").nth(1)?.split('"').next()?;
            let version = p.split("version = \"").nth(1)?.split('"').next()?;
            Some((name, version))
        })
        .collect::<Vec<_>>();
    for (name, version) in packages.iter().skip(turn % 7) {
        out.push_str(&format!("   Compiling {name} v{version}\n"));
    }
    out.push_str(&format!(
        "    Finished `test` profile [unoptimized + debuginfo] target(s) in {}.{:02}s\n",
        40 + turn,
        turn * 7 % 100
    ));
    for (path, code) in CODE {
        for name in code
            .split("fn ")
            .skip(1)
            .filter_map(|s| s.split('(').next())
            .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            out.push_str(&format!("test {path}::{name} ... ok\n"));
        }
    }
    if let Some(secret) = planted {
        out.push_str(&format!(
            "thread 'deploy' panicked: upload refused for key {secret}: 403 Forbidden\n"
        ));
    }
    out.push_str("test result: ok. 212 passed; 0 failed; 0 ignored; finished in 9.41s\n");
    out
}

/// A screenshot: PNG signature and header, then pseudo-random bytes, as the API's base64 block.
fn image(rng: &mut Rng, size: usize) -> Value {
    use base64::Engine;
    let mut bytes =
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x05\x00\x00\x00\x03\x20\x08\x06\x00\x00\x00"
            .to_vec();
    while bytes.len() < size {
        bytes.extend_from_slice(&rng.next().to_le_bytes());
    }
    json!({
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64::engine::general_purpose::STANDARD.encode(&bytes),
        }
    })
}

/// What one turn's tool returns, in the shape the turn number picks.
fn tool_result(
    turn: usize,
    rng: &mut Rng,
    plant: Option<(Shape, &str)>,
    screenshots: bool,
) -> (Shape, &'static str, Value) {
    let shapes = [
        Shape::Code,
        Shape::Diff,
        Shape::Log,
        Shape::Lockfile,
        Shape::Prose,
    ];
    let shape = match plant {
        Some((shape, _)) => shape,
        None if screenshots && turn % 6 == 5 => {
            return (
                Shape::Prose,
                "screenshot.png",
                json!([image(rng, 48 * 1024)]),
            );
        }
        None => shapes[turn % shapes.len()],
    };
    let secret = plant.map(|(_, s)| s);
    let (path, code) = CODE[turn % CODE.len()];
    let text = match shape {
        Shape::Code => {
            let mut text = code.to_string();
            if let Some(secret) = secret {
                let at = text.len() / 2;
                let at = text[..at].rfind('\n').map_or(0, |i| i + 1);
                text.insert_str(at, &format!("const DEPLOY_KEY: &str = \"{secret}\";\n"));
            }
            text
        }
        Shape::Diff => diff(path, code, turn, secret),
        Shape::Log => log(turn, secret),
        Shape::Lockfile => {
            let mut text = LOCKFILE.to_string();
            if let Some(secret) = secret {
                text.push_str(&format!(
                    "\n[[package]]\nname = \"deploy\"\nversion = \"0.1.0\"\nsource = \"git+https://{secret}@git.example.com/deploy\"\n"
                ));
            }
            text
        }
        Shape::Prose => {
            let paragraphs = paragraphs();
            let mut text = paragraphs[turn % paragraphs.len()..]
                .iter()
                .take(12)
                .copied()
                .collect::<Vec<_>>()
                .join("\n\n");
            if let Some(secret) = secret {
                text.push_str(&format!(
                    "\n\nThe staging token is {secret}, use it for the deploy."
                ));
            }
            text
        }
    };
    let file = match shape {
        Shape::Lockfile => "Cargo.lock",
        Shape::Prose => "README.md",
        Shape::Log => "cargo test",
        _ => path,
    };
    (shape, file, Value::String(text))
}

/// The conversation's JSON bytes: at least `traffic.bytes` long, or with a planted secret about
/// that long, the secret in its last turn.
pub fn conversation(traffic: &Traffic) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ traffic.bytes as u64);
    let paragraphs = paragraphs();
    let tools = json!([
        {"name": "Read", "description": "Reads a file from the local filesystem.",
         "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}},
        {"name": "Bash", "description": "Runs a bash command and returns its output.",
         "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}},
    ]);
    let mut request = json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "stream": true,
        "system": [{"type": "text", "text": paragraphs[..6].join("\n\n")}],
        "tools": tools,
        "messages": [],
    });
    let mut turn = 0;
    loop {
        let size = serde_json::to_vec(&request).map_or(0, |b| b.len());
        let remaining = traffic.bytes.saturating_sub(size);
        // The secret goes in the last turn, once the rest is within a turn of the size asked.
        let plant = match (&traffic.secret, traffic.plant_in) {
            (Some(secret), Some(shape)) if remaining < LAST_TURN_ROOM => {
                Some((shape, secret.as_str()))
            }
            _ if remaining == 0 => break,
            _ => None,
        };
        let (shape, file, content) = tool_result(turn, &mut rng, plant, traffic.screenshots);
        let tool_id = rng.id("toolu_01");
        let (tool, input) = match shape {
            Shape::Log => ("Bash", json!({"command": "cargo test --workspace"})),
            _ => (
                "Read",
                json!({"file_path": format!("/home/dev/work/{file}")}),
            ),
        };
        let messages = request["messages"]
            .as_array_mut()
            .expect("messages is an array");
        messages.push(json!({"role": "user", "content": [
            {"type": "text", "text": paragraphs[(turn * 5 + 3) % paragraphs.len()]}
        ]}));
        messages.push(json!({"role": "assistant", "content": [
            {"type": "text", "text": format!("I'll look at {file} first.")},
            {"type": "tool_use", "id": tool_id, "name": tool, "input": input},
        ]}));
        messages.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": content}
        ]}));
        turn += 1;
        if plant.is_some() {
            break;
        }
    }
    serde_json::to_vec(&request).expect("the conversation serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(bytes: usize) -> Traffic {
        Traffic {
            bytes,
            secret: None,
            plant_in: None,
            screenshots: false,
        }
    }

    #[test]
    fn a_conversation_is_deterministic_valid_json_of_the_size_asked() {
        for bytes in [50_000, 2_000_000] {
            let body = conversation(&traffic(bytes));
            assert!(
                body.len() >= bytes && body.len() < bytes + 200_000,
                "{}",
                body.len()
            );
            assert_eq!(body, conversation(&traffic(bytes)));
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert!(v["messages"].as_array().unwrap().len() >= 3);
        }
        let big = String::from_utf8(conversation(&traffic(500_000))).unwrap();
        for shape in ["diff --git", "   Compiling ", "[[package]]", "fn "] {
            assert!(big.contains(shape), "{shape}");
        }
        assert!(!big.contains("image/png"));
        let with_images = Traffic {
            screenshots: true,
            ..traffic(500_000)
        };
        let with_images = String::from_utf8(conversation(&with_images)).unwrap();
        assert!(with_images.contains("image/png"));
    }

    #[test]
    fn a_planted_secret_is_in_the_last_turn_once() {
        for shape in [
            Shape::Code,
            Shape::Diff,
            Shape::Log,
            Shape::Lockfile,
            Shape::Prose,
        ] {
            let t = Traffic {
                bytes: 200_000,
                secret: Some("AKIAZ7VQ4HX2LMN3PQRS".into()),
                plant_in: Some(shape),
                screenshots: false,
            };
            let body = String::from_utf8(conversation(&t)).unwrap();
            assert_eq!(body.matches("AKIAZ7VQ4HX2LMN3PQRS").count(), 1, "{shape:?}");
            assert!(body.rfind("AKIAZ7VQ4HX2LMN3PQRS").unwrap() > body.len() / 2);
        }
    }
}
