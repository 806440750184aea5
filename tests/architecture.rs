//! The map of the code stays true, and the shape it describes holds: every file and function
//! `ARCHITECTURE.md` names exists, the core crate depends on no I/O crate, and no two
//! top-level modules of a crate import each other.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The backticked spans of a line.
fn ticked(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

fn looks_like_path(s: &str) -> bool {
    (s.starts_with("crates/") || s.starts_with("src/") || s.starts_with("tests/") || s == "src")
        && !s.contains(' ')
}

#[test]
fn every_file_and_function_the_map_names_exists() {
    let map = fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut missing = vec![];
    let mut section = String::new();
    for line in map.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.to_string();
        }
        for t in ticked(line) {
            if looks_like_path(t) && !root().join(t).exists() {
                missing.push(format!("path {t}"));
            }
        }
        // Hop tables: | step | `file` | `function` | what |
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 5 && cells[1].starts_with(|c: char| c.is_ascii_digit()) {
            let (file, func) = (ticked(cells[2]), ticked(cells[3]));
            if let (Some(file), Some(func)) = (file.first(), func.first()) {
                let text = fs::read_to_string(root().join(file)).unwrap_or_default();
                if !text.contains(&format!("fn {func}(")) && !text.contains(&format!("fn {func}<"))
                {
                    missing.push(format!("fn {func} in {file}"));
                }
            }
        }
        // The calling contract names the core's public entry points.
        if section.starts_with("The core's calling contract") {
            let core: String = rust_files(&root().join("crates/core/src"))
                .iter()
                .map(|f| fs::read_to_string(f).unwrap())
                .collect();
            for t in ticked(line) {
                let ident = t.chars().all(|c| c.is_ascii_lowercase() || c == '_');
                if ident && !core.contains(&format!("pub fn {t}(")) {
                    missing.push(format!("pub fn {t} in crates/core/src"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what is not there: {missing:#?}"
    );
}

#[test]
fn the_core_depends_on_no_io_crate() {
    let manifest = fs::read_to_string(root().join("crates/core/Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|d| d.split("\n[").next())
        .unwrap_or_default();
    for io in ["tokio", "rusqlite", "socket2", "libc", "mio", "hickory"] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(io)),
            "the core crate depends on {io}"
        );
    }
    // And none of its sources names the clock or a socket.
    let mut offenders = vec![];
    for f in rust_files(&root().join("crates/core/src")) {
        let whole = fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.contains("tests") {
            continue;
        }
        // A unit test module may read the clock once, to start its virtual time.
        let text = whole
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        for banned in [
            "Instant::now",
            "SystemTime::now",
            "UdpSocket",
            "TcpStream",
            "std::fs::",
        ] {
            if text.contains(banned) {
                offenders.push(format!("{}: {banned}", f.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "I/O in the core: {offenders:#?}");
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The top-level module a source file belongs to (`runtime/edge.rs` → `runtime`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let mut cycles = vec![];
    for krate in [
        "crates/sip/src",
        "crates/core/src",
        "crates/server/src",
        "src",
    ] {
        let src = root().join(krate);
        let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let files = rust_files(&src);
        let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
        for f in &files {
            let Some(from) = top_module(&src, f) else {
                continue;
            };
            let text = fs::read_to_string(f).unwrap();
            // Tests may reach anywhere, and comments (doc links) import nothing: what counts is
            // the code.
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            // In a top-level module's own file, `super::` is the crate root.
            let top_file = f.parent() == Some(src.as_path())
                || (f.file_name().is_some_and(|n| n == "mod.rs")
                    && f.parent().and_then(|p| p.parent()) == Some(src.as_path()));
            for m in &modules {
                let names = |root: &str| {
                    code.contains(&format!("{root}::{m}::"))
                        || code.contains(&format!("{root}::{m};"))
                        || code.contains(&format!("{root}::{m}}}"))
                        || code.contains(&format!("{root}::{{{m}"))
                };
                if m != &from && (names("crate") || (top_file && names("super"))) {
                    uses.entry(from.clone()).or_default().insert(m.clone());
                }
            }
        }
        for (a, targets) in &uses {
            for b in targets {
                if a < b && uses.get(b).is_some_and(|t| t.contains(a)) {
                    cycles.push(format!("{krate}: {a} <-> {b}"));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that import each other: {cycles:#?}"
    );
}

/// The source of a file without its `#[cfg(test)]` part (tests are not measured).
fn code_of(f: &Path) -> String {
    let text = fs::read_to_string(f).unwrap();
    text.split("#[cfg(test)]")
        .next()
        .unwrap_or_default()
        .to_string()
}

fn is_test_file(f: &Path) -> bool {
    f.file_name()
        .is_some_and(|n| n.to_string_lossy().contains("tests"))
}

#[test]
fn the_core_is_small_and_owned() {
    let src = root().join("crates/core/src");
    let mut over = vec![];
    for f in rust_files(&src).iter().filter(|f| !is_test_file(f)) {
        let code = code_of(f);
        let lines = code.lines().count();
        if lines > 900 {
            over.push(format!("{}: {lines} lines (900 at most)", f.display()));
        }
        // Fields of each struct with named fields: `NAME: TYPE` lines one level in.
        let mut rest = code.as_str();
        while let Some(at) = rest.find("struct ") {
            rest = &rest[at + 7..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let Some(open) = rest.find(['{', ';', '(']) else {
                break;
            };
            if !rest[open..].starts_with('{') {
                continue;
            }
            let body = &rest[open + 1..];
            let Some(close) = body.find("\n}") else {
                continue;
            };
            let fields = body[..close]
                .lines()
                .filter(|l| {
                    let t = l.trim_start();
                    let indent = l.len() - t.len();
                    indent == 4
                        && !t.starts_with("//")
                        && !t.starts_with('#')
                        && t.split_once(':').is_some_and(|(n, _)| {
                            n.trim_start_matches("pub(crate) ")
                                .trim_start_matches("pub(super) ")
                                .trim_start_matches("pub ")
                                .chars()
                                .all(|c| c.is_alphanumeric() || c == '_')
                        })
                })
                .count();
            if fields > 12 {
                over.push(format!(
                    "{}: struct {name} has {fields} fields (12 at most)",
                    f.display()
                ));
            }
        }
    }
    assert!(over.is_empty(), "the core outgrew its shape: {over:#?}");
}
