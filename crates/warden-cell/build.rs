//! Build script: links the `warden-shim` binary as a position-dependent executable.
//!
//! Why: in a PIE every pointer in read-only data (vtables, panic locations, string tables)
//! is patched at load time, which copies those pages into each process. Hundreds of shims run
//! at once, so keeping them shared is worth the lost ASLR of one tiny binary.

fn main() {
    println!("cargo:rustc-link-arg-bin=warden-shim=-no-pie");
}
