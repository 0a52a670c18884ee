//! The `warden` binary: the all-in-one server (`warden up`), the CLI, and the per-cell shim entry.

mod cli;

fn main() {
    // The shim path runs before anything else: no runtime, no allocation beyond what it needs.
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new("shim")) {
        match args.next() {
            Some(dir) => warden_cell::shim_main(std::path::Path::new(&dir)),
            None => {
                eprintln!("usage: warden shim CELL_DIR");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = cli::main() {
        eprintln!("warden: error: {e:#}");
        std::process::exit(1);
    }
}
