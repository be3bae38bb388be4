//! DESIGN §6: the pure crates name no runtime, socket or file edge. This fails if
//! `sluice-proto`, `sluice-storage`, `sluice-replica`, `sluice-controller` or `sluice-engine` ever depends, directly or transitively, on
//! glommio, tokio, quinn, io-uring or memmap2.

use std::process::Command;

const FORBIDDEN: &[&str] = &["glommio", "tokio", "quinn", "io-uring", "memmap2"];

#[test]
fn pure_crates_reach_no_runtime() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for package in [
        "sluice-proto",
        "sluice-storage",
        "sluice-replica",
        "sluice-controller",
        "sluice-engine",
    ] {
        let out = Command::new(env!("CARGO"))
            .current_dir(root)
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "-p",
                package,
            ])
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        assert!(
            tree.contains(package),
            "cargo tree printed nothing useful: {tree}"
        );
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            assert!(
                !FORBIDDEN.contains(&name),
                "{package} depends on {name}:\n{tree}"
            );
        }
    }
}
