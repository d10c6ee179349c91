//! The mitmproxy addon, built into the binary so an installed `bottle` carries the addon it was
//! tested with. The executor writes these files into mitmproxy with the current time as their
//! mtime (mitmproxy never loads a script whose mtime is the epoch).

/// (path under the addon directory, contents).
pub const FILES: [(&str, &str); 15] = [
    ("addon.py", include_str!("../../addon/addon.py")),
    (
        "bottle_addon/__init__.py",
        include_str!("../../addon/bottle_addon/__init__.py"),
    ),
    (
        "bottle_addon/canonical.py",
        include_str!("../../addon/bottle_addon/canonical.py"),
    ),
    (
        "bottle_addon/credentials.py",
        include_str!("../../addon/bottle_addon/credentials.py"),
    ),
    (
        "bottle_addon/hooks.py",
        include_str!("../../addon/bottle_addon/hooks.py"),
    ),
    (
        "bottle_addon/layers.py",
        include_str!("../../addon/bottle_addon/layers.py"),
    ),
    (
        "bottle_addon/logs.py",
        include_str!("../../addon/bottle_addon/logs.py"),
    ),
    (
        "bottle_addon/policy.py",
        include_str!("../../addon/bottle_addon/policy.py"),
    ),
    (
        "bottle_addon/record.py",
        include_str!("../../addon/bottle_addon/record.py"),
    ),
    (
        "bottle_addon/relay.py",
        include_str!("../../addon/bottle_addon/relay.py"),
    ),
    (
        "bottle_addon/requirements.py",
        include_str!("../../addon/bottle_addon/requirements.py"),
    ),
    (
        "bottle_addon/scanner.py",
        include_str!("../../addon/bottle_addon/scanner.py"),
    ),
    (
        "bottle_addon/ssrf.py",
        include_str!("../../addon/bottle_addon/ssrf.py"),
    ),
    (
        "bottle_addon/trust.py",
        include_str!("../../addon/bottle_addon/trust.py"),
    ),
    (
        "bottle_addon/verdict.py",
        include_str!("../../addon/bottle_addon/verdict.py"),
    ),
];

/// sha256 over every path and its contents: which addon a plan carries, in a line.
pub fn digest() -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (path, text) in FILES {
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// A module added to the addon and not listed here would be missing in mitmproxy, and the
    /// addon would fail to import: the list must be the addon's Python files, exactly.
    #[test]
    fn every_python_file_of_the_addon_is_built_in() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../addon");
        let mut on_disk = vec!["addon.py".to_string()];
        for entry in std::fs::read_dir(root.join("bottle_addon")).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".py") {
                on_disk.push(format!("bottle_addon/{name}"));
            }
        }
        on_disk.sort();
        let built_in: Vec<String> = super::FILES.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(built_in, on_disk);
    }
}
