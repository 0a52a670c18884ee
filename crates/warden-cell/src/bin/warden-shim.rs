//! `warden-shim <cell_dir>`: the standalone per-cell shim binary. It is a separate, small
//! executable so that each running cell costs as little memory as possible.

use std::path::Path;

fn main() {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next()) {
        (Some(dir), None) if !dir.is_empty() => warden_cell::shim_main(Path::new(&dir)),
        _ => {
            eprintln!("usage: warden-shim <cell_dir>");
            eprintln!("(started by the warden supervisor; not meant to be run by hand)");
            std::process::exit(2);
        }
    }
}
