//! `cargo xtask cycles`: module-level import cycles in every crate of the workspace.
//!
//! A node is a module (a file module, or an inline module that is not `#[cfg(test)]`). There is
//! an edge A → B when A's non-test code names an item of B through a path: `use crate::b::X`,
//! `crate::b::f()`, `super::X`, `self::b::X`, `b::X` for a child `b`, or a glob. A re-export is
//! followed to the module that defines the item (`crate::Spec`, with `pub use spec::Spec` in the
//! root, is an edge to `spec`); a `mod b;` declaration alone is not an edge. A cycle is a strongly
//! connected component of more than one module: each is printed with the references that form
//! it (file:line), so a developer sees what to move to a leaf module.

mod graph;
mod refs;
mod tree;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use graph::strongly_connected;
use refs::{edges, Edges};
use tree::{LoadTreeError, Tree};

/// One crate target to check: its name (with the target kind when the package has several) and
/// its root file.
struct Target {
    name: String,
    root: PathBuf,
}

/// Prints every cycle of every crate target in the workspace; the process's exit code (1 if
/// there is a cycle or a crate could not be read).
pub fn main() -> i32 {
    let workspace = match workspace_root() {
        Ok(root) => root,
        Err(e) => {
            eprintln!("xtask cycles: {e}");
            return 1;
        }
    };
    let targets = match workspace_targets() {
        Ok(targets) => targets,
        Err(e) => {
            eprintln!("xtask cycles: {e}");
            return 1;
        }
    };
    let read = |path: &Path| std::fs::read_to_string(path);
    let (mut n_cycles, mut failed) = (0, false);
    for target in &targets {
        match check(&target.root, &read) {
            Ok((tree, cycles)) => {
                for missing in &tree.missing {
                    eprintln!(
                        "xtask cycles: {}: module file {} not found (cfg-gated?)",
                        target.name,
                        relative(missing, &workspace)
                    );
                }
                n_cycles += cycles.len();
                print!("{}", report(&target.name, &tree, &cycles, &workspace));
            }
            Err(e) => {
                eprintln!("xtask cycles: {}: {e}", target.name);
                failed = true;
            }
        }
    }
    if n_cycles == 0 {
        println!("xtask cycles: no module-level import cycle in {} crate targets", targets.len());
    } else {
        println!("xtask cycles: {n_cycles} cycle(s); move what both sides need to a leaf module");
    }
    i32::from(n_cycles > 0 || failed)
}

/// A cycle: its modules and the edges between them.
pub struct Cycle {
    pub modules: Vec<usize>,
    pub edges: Edges,
}

/// The tree of the crate at `root` and its cycles.
pub fn check(root: &Path, read: tree::ReadFile<'_>) -> Result<(Tree, Vec<Cycle>), LoadTreeError> {
    let tree = Tree::load(root, read)?;
    let all = edges(&tree);
    let cycles = strongly_connected(tree.modules.len(), all.keys().copied())
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|modules| {
            let edges = all
                .iter()
                .filter(|((from, to), _)| modules.contains(from) && modules.contains(to))
                .map(|(key, sites)| (*key, sites.clone()))
                .collect();
            Cycle { modules, edges }
        })
        .collect();
    Ok((tree, cycles))
}

/// The cycles of one crate target, for a developer: modules, then each edge with its sites.
pub fn report(target: &str, tree: &Tree, cycles: &[Cycle], workspace: &Path) -> String {
    let mut out = String::new();
    for cycle in cycles {
        let names: Vec<String> = cycle.modules.iter().map(|m| tree.name(*m)).collect();
        let _ = writeln!(out, "cycle in {target} ({} modules): {}", names.len(), names.join(", "));
        for ((from, to), sites) in &cycle.edges {
            let sites: Vec<String> = sites.iter().map(|s| format!("{}:{}", relative(&s.file, workspace), s.line)).collect();
            let _ = writeln!(out, "  {} -> {}: {}", tree.name(*from), tree.name(*to), sites.join(", "));
        }
    }
    out
}

fn relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base).unwrap_or(path).display().to_string()
}

fn workspace_root() -> Result<PathBuf, String> {
    // xtask's manifest dir is `<workspace>/xtask`.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).ok_or_else(|| "no workspace root".to_string())
}

/// The library and binary targets of every workspace package, from `cargo metadata`.
fn workspace_targets() -> Result<Vec<Target>, String> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    let mut targets = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let package_name = package["name"].as_str().unwrap_or("?");
        for target in package["targets"].as_array().into_iter().flatten() {
            let kinds: Vec<&str> = target["kind"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect();
            let Some(kind) = kinds.iter().find(|k| matches!(**k, "lib" | "rlib" | "bin" | "proc-macro")) else { continue };
            let name = target["name"].as_str().unwrap_or("?");
            let root = PathBuf::from(target["src_path"].as_str().unwrap_or_default());
            let name = if *kind == "bin" { format!("{package_name} (bin {name})") } else { package_name.to_string() };
            targets.push(Target { name, root });
        }
    }
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(targets)
}

#[cfg(test)]
mod tests;
