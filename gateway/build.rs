//! Records the commit the binary is built from, for `--version` and
//! `cascadia_build_info`: `CASCADIA_COMMIT` when the build environment sets
//! it (a container build without `.git`), else `git rev-parse`, else
//! "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CASCADIA_COMMIT");
    // A new commit or checkout moves HEAD; rebuild to pick it up.
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let commit = std::env::var("CASCADIA_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let output = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=CASCADIA_COMMIT={commit}");
}
