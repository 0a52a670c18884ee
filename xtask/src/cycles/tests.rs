//! The checker on small crates written inline.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use super::{check, report};

/// Runs the checker on `files` (path → source; the root is `src/lib.rs`); the report's text.
fn cycles_of(files: &[(&str, &str)]) -> String {
    let files: HashMap<PathBuf, String> = files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
    let read = |path: &Path| files.get(path).cloned().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound));
    let (tree, cycles) = check(Path::new("src/lib.rs"), &read).unwrap();
    report("demo", &tree, &cycles, Path::new(""))
}

#[test]
fn two_siblings_that_use_each_other_are_a_cycle_with_both_references_named() {
    let out = cycles_of(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "use crate::b::B;\npub struct A;\n"),
        ("src/b.rs", "pub struct B;\n\npub fn f() -> crate::a::A {\n    crate::a::A\n}\n"),
    ]);
    assert_eq!(
        out,
        "cycle in demo (2 modules): crate::a, crate::b\n  crate::a -> crate::b: src/a.rs:1\n  crate::b -> crate::a: src/b.rs:3, src/b.rs:4\n"
    );
}

#[test]
fn a_child_using_its_parent_through_super_while_the_parent_uses_it_is_a_cycle() {
    let out = cycles_of(&[
        ("src/lib.rs", "mod engine;\npub struct Config;\npub fn run() {\n    engine::step();\n}\n"),
        ("src/engine/mod.rs", "mod rules;\npub fn step() {\n    rules::apply();\n}\n"),
        ("src/engine/rules.rs", "pub fn apply() {\n    let _ = super::super::Config;\n}\n"),
    ]);
    assert!(out.contains("cycle in demo (3 modules): crate, crate::engine, crate::engine::rules\n"), "{out}");
    assert!(out.contains("  crate::engine::rules -> crate: src/engine/rules.rs:2\n"), "{out}");
}

#[test]
fn an_item_reached_through_a_re_export_of_the_root_is_an_edge_to_its_own_module() {
    // `crate::Spec` is spec's; were it the root's, root -> store (re-export) and store -> root
    // would be a cycle that is not there.
    let out = cycles_of(&[
        ("src/lib.rs", "mod spec;\nmod store;\npub use spec::Spec;\npub use store::Store;\n"),
        ("src/spec.rs", "pub struct Spec;\n"),
        ("src/store.rs", "use crate::Spec;\npub struct Store(Spec);\n"),
    ]);
    assert_eq!(out, "");
}

#[test]
fn a_mod_declaration_visibility_test_code_and_outside_crates_are_not_edges() {
    let out = cycles_of(&[
        ("src/lib.rs", "mod a;\nmod b;\nuse std::fmt;\npub(crate) fn g() {}\n"),
        ("src/a.rs", "pub(crate) struct A;\npub(super) fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::b::B;\n}\n"),
        ("src/b.rs", "use crate::a::A;\npub struct B(A);\n#[test]\nfn t() {\n    let _ = super::a::A;\n}\n"),
    ]);
    assert_eq!(out, "");
}

#[test]
fn globs_inline_modules_and_macro_arguments_are_followed() {
    let out = cycles_of(&[
        (
            "src/lib.rs",
            "mod outer {\n    pub mod inner {\n        use super::*;\n    }\n    pub fn f() {\n        println!(\"{}\", self::inner::g());\n    }\n}\n",
        ),
    ]);
    assert!(out.contains("cycle in demo (2 modules): crate::outer, crate::outer::inner\n"), "{out}");
    assert!(out.contains("  crate::outer -> crate::outer::inner: src/lib.rs:6\n"), "{out}");
    assert!(out.contains("  crate::outer::inner -> crate::outer: src/lib.rs:3\n"), "{out}");
}
