//! Build facts for `herald --version`: the git commit the binary was built from
//! (`unknown` outside a git checkout, such as a packaged crate) and the compiled
//! features.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let features: Vec<&str> = [
        ("nats", "CARGO_FEATURE_NATS"),
        ("kafka", "CARGO_FEATURE_KAFKA"),
        ("jemalloc", "CARGO_FEATURE_JEMALLOC"),
    ]
    .into_iter()
    .filter(|(_, var)| std::env::var_os(var).is_some())
    .map(|(name, _)| name)
    .collect();
    let features = if features.is_empty() {
        "none".to_owned()
    } else {
        features.join(", ")
    };
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=HERALD_VERSION={version} (commit {commit}; features: {features})");
    // A new commit or a checkout of another branch changes these.
    for path in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
