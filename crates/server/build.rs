//! Builds the softphone page (`web/`: the page's code bundled with JsSIP by esbuild, as
//! pinned by `web/package-lock.json`) into OUT_DIR, where `web::page` embeds it. `npm ci`
//! runs first when `web/node_modules` is missing or older than the lock file.
//! `HEDGEWITCH_WEB_DIST` names a folder built beforehand instead (packaging without Node).
//! Without Node.js or npm the server is built with a page that says so.

use std::path::{Path, PathBuf};
use std::process::Command;

const FILES: [&str; 3] = ["index.html", "style.css", "softphone.js"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let web = manifest.join("../../web");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("web");
    // node_modules' stamp too: when `npm ci` ran elsewhere (scripts/test) after a build
    // without Node, the page is built then.
    for watched in [
        "src",
        "build.mjs",
        "package.json",
        "package-lock.json",
        "node_modules/.package-lock.json",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=HEDGEWITCH_WEB_DIST");
    let _ = std::fs::create_dir_all(&out);
    let result = match std::env::var_os("HEDGEWITCH_WEB_DIST") {
        Some(dist) => copy_built(Path::new(&dist), &out),
        None => build(&web, &out),
    };
    if let Err(why) = result {
        println!("cargo:warning=the softphone page was not built: {why}");
        placeholder(&out, &why);
    }
}

fn build(web: &Path, out: &Path) -> Result<(), String> {
    let stamp = web.join("node_modules/.package-lock.json");
    let lock = web.join("package-lock.json");
    let stale = match (modified(&stamp), modified(&lock)) {
        (Some(s), Some(l)) => s < l,
        _ => true,
    };
    if stale {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(web),
            "npm ci",
        )?;
    }
    run(
        Command::new("node")
            .arg("build.mjs")
            .arg(out)
            .current_dir(web),
        "node build.mjs",
    )
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let output = cmd
        .output()
        .map_err(|e| format!("`{what}` could not run ({e}); Node.js and npm are needed"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{what}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn copy_built(dist: &Path, out: &Path) -> Result<(), String> {
    for f in FILES {
        std::fs::copy(dist.join(f), out.join(f))
            .map_err(|e| format!("{}: {e}", dist.join(f).display()))?;
    }
    Ok(())
}

/// A page that tells why there is no softphone, so that the binary still builds and runs.
fn placeholder(out: &Path, why: &str) {
    let why = why.replace('&', "&amp;").replace('<', "&lt;");
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>hedgewitch</title>\
         <p>This hedgewitch was built without its softphone page: {why}</p>\
         <p>Install Node.js and npm and build again.</p>"
    );
    let _ = std::fs::write(out.join("index.html"), html);
    let _ = std::fs::write(out.join("style.css"), "");
    let _ = std::fs::write(out.join("softphone.js"), "");
}
