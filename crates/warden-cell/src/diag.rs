//! Diagnostics: the shim's one-line reports on its stderr (`shim.err`, kept for post-mortems),
//! and errors rendered with their whole source chain for the places that hand them on as text
//! (the handshake line, `exit.json`'s `detail`, a lost cell's reason).

use std::error::Error;
use std::fmt;
use std::io::{self, Write};

/// Writes a diagnostic to stderr (the shim's `shim.err`); never fails, never panics.
pub(crate) fn report(args: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "warden-shim[{}]: {args}", std::process::id());
}

/// Displays an error followed by each of its sources, `outer: inner: innermost`.
pub(crate) struct Chain<'a>(pub &'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// [`Chain`] as a `String`.
pub(crate) fn chain(e: &dyn Error) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("open lock")]
    struct Outer(#[source] io::Error);

    #[test]
    fn a_chain_names_every_source_once() {
        let e = Outer(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(chain(&e), "open lock: No such file or directory (os error 2)");
    }
}
