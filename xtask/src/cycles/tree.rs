//! A crate's module tree, read from its source files with `syn`: file modules and inline
//! modules, each with its own non-test items; `#[cfg(test)]` modules and items are left out.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// One module: where it sits in the crate and what it holds.
pub struct Module {
    /// Its path from the crate root (empty for the root).
    pub path: Vec<String>,
    /// The file its items are written in (an inline module shares its parent's).
    pub file: PathBuf,
    /// Its items without `#[cfg(test)]` ones and without its child modules' items.
    pub items: Vec<syn::Item>,
    /// Child module name → index in [`Tree::modules`].
    pub children: BTreeMap<String, usize>,
    pub parent: Option<usize>,
}

/// Every non-test module of one crate target; index 0 is the root.
pub struct Tree {
    pub modules: Vec<Module>,
    /// Module files declared but not found (`#[cfg]`-gated for another platform, usually).
    pub missing: Vec<PathBuf>,
}

/// Reading or parsing a module's file failed.
#[derive(Debug)]
pub enum LoadTreeError {
    Read { file: PathBuf, source: io::Error },
    Parse { file: PathBuf, source: syn::Error },
}

impl std::fmt::Display for LoadTreeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadTreeError::Read { file, .. } => write!(f, "cannot read module file {}", file.display()),
            LoadTreeError::Parse { file, source } => {
                let at = source.span().start();
                write!(f, "cannot parse {}:{}:{}: {source}", file.display(), at.line, at.column + 1)
            }
        }
    }
}

impl std::error::Error for LoadTreeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadTreeError::Read { source, .. } => Some(source),
            LoadTreeError::Parse { source, .. } => Some(source),
        }
    }
}

/// Reads a file's text; the real file system, or a map of files in the tests.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> io::Result<String>;

impl Tree {
    /// The tree under the crate root file (`lib.rs`, `main.rs`, a `bin/` file).
    pub fn load(root: &Path, read: ReadFile<'_>) -> Result<Tree, LoadTreeError> {
        let mut tree = Tree { modules: Vec::new(), missing: Vec::new() };
        let items = parse_file(root, read)?;
        let dir = root.parent().unwrap_or(Path::new("")).to_path_buf();
        tree.add(Vec::new(), None, root.to_path_buf(), items, (&dir, false), read)?;
        Ok(tree)
    }

    /// Adds a module with `items`; `child_dir` is where its `mod x;` files are looked for, and
    /// `inline` whether the module is written inside its parent's file.
    fn add(
        &mut self,
        path: Vec<String>,
        parent: Option<usize>,
        file: PathBuf,
        items: Vec<syn::Item>,
        (child_dir, inline): (&Path, bool),
        read: ReadFile<'_>,
    ) -> Result<usize, LoadTreeError> {
        let index = self.modules.len();
        self.modules.push(Module {
            path: path.clone(),
            file: file.clone(),
            items: Vec::new(),
            children: BTreeMap::new(),
            parent,
        });
        let mut own = Vec::new();
        for item in items {
            if is_test_only(item_attrs(&item)) {
                continue;
            }
            let syn::Item::Mod(module) = item else {
                own.push(item);
                continue;
            };
            let name = module.ident.to_string();
            let mut child_path = path.clone();
            child_path.push(name.clone());
            let path_attr = path_attribute(&module.attrs);
            let child = match module.content {
                Some((_, inline_items)) => {
                    let dir = child_dir.join(path_attr.as_deref().unwrap_or(&name));
                    self.add(child_path, Some(index), file.clone(), inline_items, (&dir, true), read)?
                }
                None => {
                    let (child_file, grandchild_dir) = match &path_attr {
                        // A `#[path]` file is read like a `mod.rs`: its children sit beside it.
                        Some(relative) => {
                            let base = if inline { child_dir } else { file_dir(&file) };
                            let child_file = base.join(relative);
                            let dir = file_dir(&child_file).to_path_buf();
                            (child_file, dir)
                        }
                        None => {
                            let flat = child_dir.join(format!("{name}.rs"));
                            let nested = child_dir.join(&name).join("mod.rs");
                            if read(&flat).is_ok() {
                                (flat, child_dir.join(&name))
                            } else {
                                (nested, child_dir.join(&name))
                            }
                        }
                    };
                    let child_items = match read(&child_file) {
                        Ok(_) => parse_file(&child_file, read)?,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            self.missing.push(child_file);
                            continue;
                        }
                        Err(source) => return Err(LoadTreeError::Read { file: child_file, source }),
                    };
                    self.add(child_path, Some(index), child_file, child_items, (&grandchild_dir, false), read)?
                }
            };
            self.modules[index].children.insert(name, child);
        }
        self.modules[index].items = own;
        Ok(index)
    }

    /// `crate::a::b` (or `crate` for the root).
    pub fn name(&self, module: usize) -> String {
        std::iter::once("crate".to_string()).chain(self.modules[module].path.iter().cloned()).collect::<Vec<_>>().join("::")
    }
}

fn parse_file(file: &Path, read: ReadFile<'_>) -> Result<Vec<syn::Item>, LoadTreeError> {
    let text = read(file).map_err(|source| LoadTreeError::Read { file: file.to_path_buf(), source })?;
    let parsed = syn::parse_file(&text).map_err(|source| LoadTreeError::Parse { file: file.to_path_buf(), source })?;
    Ok(parsed.items)
}

fn file_dir(file: &Path) -> &Path {
    file.parent().unwrap_or(Path::new(""))
}

/// The value of `#[path = "…"]`.
fn path_attribute(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find(|a| a.path().is_ident("path")).and_then(|a| match &a.meta {
        syn::Meta::NameValue(syn::MetaNameValue {
            value: syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }), ..
        }) => Some(s.value()),
        _ => None,
    })
}

pub fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::ExternCrate(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::ForeignMod(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::TraitAlias(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// `#[test]`, `#[cfg(test)]` or `#[cfg(all(test, …))]`: code that only a test build sees.
pub fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        if attr.path().is_ident("test") {
            return true;
        }
        if !attr.path().is_ident("cfg") {
            return false;
        }
        attr.parse_args::<syn::Meta>().is_ok_and(|meta| cfg_requires_test(&meta))
    })
}

fn cfg_requires_test(meta: &syn::Meta) -> bool {
    match meta {
        syn::Meta::Path(path) => path.is_ident("test"),
        syn::Meta::List(list) if list.path.is_ident("all") => list
            .parse_args_with(syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
            .is_ok_and(|all| all.iter().any(cfg_requires_test)),
        _ => false,
    }
}
