//! The module-level edges of a crate: every path in a module's non-test code (`use` trees,
//! expressions, types, patterns, macro arguments that parse as expressions) that names an item
//! of another module of the same crate, resolved through re-exports to the module that defines
//! the item.

use std::collections::BTreeMap;
use std::path::PathBuf;

use syn::visit::Visit;

use super::tree::{is_test_only, item_attrs, Tree};

/// Where in the source a module refers to another: file and line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    pub file: PathBuf,
    pub line: usize,
}

/// `(from, to)` module indices → every place `from` refers to an item of `to`.
pub type Edges = BTreeMap<(usize, usize), Vec<Site>>;

/// One path as written, with its start line.
struct Reference {
    /// `crate`, `self`, `super` kept as segments.
    segments: Vec<String>,
    line: usize,
}

/// Every edge between the modules of `tree`.
pub fn edges(tree: &Tree) -> Edges {
    let mut edges = Edges::new();
    for (from, module) in tree.modules.iter().enumerate() {
        let mut collector = Collector { references: Vec::new() };
        for item in &module.items {
            collector.visit_item(item);
        }
        for reference in collector.references {
            let Some(to) = resolve(tree, from, &reference.segments, 0) else { continue };
            if to != from {
                edges.entry((from, to)).or_default().push(Site { file: module.file.clone(), line: reference.line });
            }
        }
    }
    for sites in edges.values_mut() {
        sites.sort();
        sites.dedup();
    }
    edges
}

/// Resolution gives up past this many re-exports in a row (a re-export loop).
const MAX_DEPTH: usize = 16;

/// The module defining what `segments` names when written in module `from`; `None` for what is
/// not in this crate (std, dependencies, local names).
fn resolve(tree: &Tree, from: usize, segments: &[String], depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let (mut module, mut rest) = match segments.first().map(String::as_str)? {
        "crate" => (0, &segments[1..]),
        "self" => (from, &segments[1..]),
        "super" => {
            let mut module = from;
            let mut rest = segments;
            while rest.first().map(String::as_str) == Some("super") {
                module = tree.modules[module].parent?;
                rest = &rest[1..];
            }
            (module, rest)
        }
        first if tree.modules[from].children.contains_key(first) => (from, segments),
        _ => return None,
    };
    while let Some(child) = rest.first().and_then(|name| tree.modules[module].children.get(name)) {
        module = *child;
        rest = &rest[1..];
    }
    let Some(name) = rest.first() else { return Some(module) };
    match defining_module(tree, module, name, depth) {
        Lookup::In(defining) => Some(defining),
        Lookup::OutsideTheCrate => None,
        // Made by a macro, or an enum variant glob: the module is the best guess.
        Lookup::NotFound => Some(module),
    }
}

/// Where a name of a module comes from.
enum Lookup {
    In(usize),
    /// A `use` of something outside the crate (`pub use serde_json::Value`).
    OutsideTheCrate,
    NotFound,
}

/// Where `name`, as seen from inside `module`, is defined: `module` itself, or wherever a `use`
/// in `module` (a re-export, or a glob) leads.
fn defining_module(tree: &Tree, module: usize, name: &str, depth: usize) -> Lookup {
    let items = &tree.modules[module].items;
    if items.iter().any(|item| defines(item, name)) {
        return Lookup::In(module);
    }
    let mut globs = Vec::new();
    for item in items {
        let syn::Item::Use(item_use) = item else { continue };
        for (segments, binding) in use_leaves(&item_use.tree) {
            match binding {
                Binding::Name(bound) if bound == name => {
                    return resolve(tree, module, &segments, depth + 1).map_or(Lookup::OutsideTheCrate, Lookup::In);
                }
                Binding::Glob => globs.push(segments),
                _ => {}
            }
        }
    }
    for segments in globs {
        if let Some(source) = resolve(tree, module, &segments, depth + 1) {
            if source != module && depth < MAX_DEPTH {
                if let Lookup::In(found) = defining_module(tree, source, name, depth + 1) {
                    return Lookup::In(found);
                }
            }
        }
    }
    Lookup::NotFound
}

/// Whether `item` defines `name` in its module's namespace.
fn defines(item: &syn::Item, name: &str) -> bool {
    let ident = match item {
        syn::Item::Const(i) => &i.ident,
        syn::Item::Enum(i) => &i.ident,
        syn::Item::Fn(i) => &i.sig.ident,
        syn::Item::Macro(i) => match &i.ident {
            Some(ident) => ident,
            None => return false,
        },
        syn::Item::Static(i) => &i.ident,
        syn::Item::Struct(i) => &i.ident,
        syn::Item::Trait(i) => &i.ident,
        syn::Item::TraitAlias(i) => &i.ident,
        syn::Item::Type(i) => &i.ident,
        syn::Item::Union(i) => &i.ident,
        _ => return false,
    };
    ident == name
}

/// What a `use` leaf brings into scope.
enum Binding {
    /// A name (the last segment, or the `as` rename).
    Name(String),
    Glob,
    /// `as _`: nothing nameable.
    Nothing,
}

/// Every leaf of a `use` tree: its full path and what it binds. `a::{self, b}` gives `a` (bound
/// as `a`) and `a::b`.
fn use_leaves(tree: &syn::UseTree) -> Vec<(Vec<String>, Binding)> {
    let mut leaves = Vec::new();
    collect_leaves(tree, &mut Vec::new(), &mut leaves);
    leaves
}

fn collect_leaves(tree: &syn::UseTree, prefix: &mut Vec<String>, leaves: &mut Vec<(Vec<String>, Binding)>) {
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            collect_leaves(&path.tree, prefix, leaves);
            prefix.pop();
        }
        syn::UseTree::Name(name) => {
            let ident = name.ident.to_string();
            if ident == "self" {
                let bound = prefix.last().cloned().unwrap_or_default();
                leaves.push((prefix.clone(), Binding::Name(bound)));
            } else {
                let mut path = prefix.clone();
                path.push(ident.clone());
                leaves.push((path, Binding::Name(ident)));
            }
        }
        syn::UseTree::Rename(rename) => {
            let mut path = prefix.clone();
            if rename.ident != "self" {
                path.push(rename.ident.to_string());
            }
            let bound = rename.rename.to_string();
            leaves.push((path, if bound == "_" { Binding::Nothing } else { Binding::Name(bound) }));
        }
        syn::UseTree::Glob(_) => leaves.push((prefix.clone(), Binding::Glob)),
        syn::UseTree::Group(group) => {
            for tree in &group.items {
                collect_leaves(tree, prefix, leaves);
            }
        }
    }
}

/// Collects the paths of one module's items, skipping test-only items and child modules.
struct Collector {
    references: Vec<Reference>,
}

impl Collector {
    fn push(&mut self, segments: Vec<String>, line: usize) {
        self.references.push(Reference { segments, line });
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        // A child module is a node of its own; a `mod b;` declaration is not an edge.
        if matches!(item, syn::Item::Mod(_)) || is_test_only(item_attrs(item)) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Const(i) => &i.attrs,
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => return syn::visit::visit_impl_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if item.leading_colon.is_some() {
            return;
        }
        let line = item.use_token.span.start().line;
        for (segments, _) in use_leaves(&item.tree) {
            if !segments.is_empty() {
                self.push(segments, line);
            }
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            let keyword = matches!(segments[0].as_str(), "crate" | "self" | "super");
            if segments.len() > 1 || keyword {
                let line = path.segments[0].ident.span().start().line;
                self.push(segments, line);
            }
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {
        // `pub(crate)`, `pub(super)`, `pub(in crate::a)`: who may see an item, not a use of one.
    }

    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {
        // Derives, lints and docs name no module of the crate.
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        // `format!`, `assert_eq!`, `vec!` and most others take expressions separated by commas.
        let parser = syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated;
        if let Ok(args) = syn::parse::Parser::parse2(parser, mac.tokens.clone()) {
            for arg in &args {
                self.visit_expr(arg);
            }
        }
    }
}
