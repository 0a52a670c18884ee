//! The cell's authenticated exit report: one record `warden-exit-v1 <cell_id> exit <code>\n`
//! (or `signal <n>`) followed by HMAC-SHA256 of the record under the cell's one-time key. The
//! cell's init writes it in a single `write` (well below `PIPE_BUF`, so it is atomic); the shim
//! accepts an exit code only if the tag verifies, so nothing the workload can write — it never
//! holds the key nor the pipe — can pass for a real exit.

use sha2::{Digest, Sha256};

pub(crate) const KEY_LEN: usize = 32;
const MAC_LEN: usize = 32;
const MAGIC: &[u8] = b"warden-exit-v1 ";
/// Cell ids are file names, so at most 255 bytes (`NAME_MAX`).
pub(crate) const MAX_CELL_ID: usize = 255;
/// Room for the longest record and its tag.
pub(crate) const MAX_REPORT: usize = 512;

pub(crate) type Key = [u8; KEY_LEN];

/// How the workload (the cell's PID 2) ended, as its init saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Exited(i32),
    Signaled(i32),
}

/// A fresh random key from the kernel (`getrandom`, blocking only until the pool is seeded).
pub(crate) fn new_key() -> std::io::Result<Key> {
    let mut key = [0u8; KEY_LEN];
    let mut got = 0;
    while got < KEY_LEN {
        // SAFETY: the destination range lies inside `key`.
        let n = unsafe { libc::getrandom(key[got..].as_mut_ptr().cast(), KEY_LEN - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(key)
}

/// HMAC-SHA256 (RFC 2104) for keys of at most one block, which ours always are.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; MAC_LEN] {
    debug_assert!(key.len() <= 64);
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate().take(64) {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new().chain_update(ipad).chain_update(msg).finalize();
    Sha256::new().chain_update(opad).chain_update(inner).finalize().into()
}

/// Compares without an early exit, so timing does not tell how many leading bytes matched.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Appends decimal `n` to `out` at `*len`; no allocation (the init runs this).
fn push(out: &mut [u8], len: &mut usize, bytes: &[u8]) -> Option<()> {
    out.get_mut(*len..*len + bytes.len())?.copy_from_slice(bytes);
    *len += bytes.len();
    Some(())
}

fn push_int(out: &mut [u8], len: &mut usize, n: i32) -> Option<()> {
    let mut digits = [0u8; 11];
    let mut i = digits.len();
    let mut v = i64::from(n).unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        digits[i] = b'-';
    }
    push(out, len, &digits[i..])
}

/// Builds record + tag into `out`; returns its length, or `None` if the cell id is too long.
pub(crate) fn encode(out: &mut [u8; MAX_REPORT], key: &Key, cell_id: &[u8], outcome: Outcome) -> Option<usize> {
    if cell_id.len() > MAX_CELL_ID {
        return None;
    }
    let mut len = 0;
    push(out, &mut len, MAGIC)?;
    push(out, &mut len, cell_id)?;
    let (kind, n): (&[u8], i32) = match outcome {
        Outcome::Exited(code) => (b" exit ", code),
        Outcome::Signaled(sig) => (b" signal ", sig),
    };
    push(out, &mut len, kind)?;
    push_int(out, &mut len, n)?;
    push(out, &mut len, b"\n")?;
    let mac = hmac_sha256(key, &out[..len]);
    push(out, &mut len, &mac)?;
    Some(len)
}

/// Why a report was rejected; becomes the exit's `detail`.
pub(crate) const VERIFY_FAILED: &str = "exit report failed verification";

/// Checks the tag (constant time) before looking at anything else, then that the record is
/// well-formed, for this cell, and a possible exit: code 0..=255 or a real signal number.
pub(crate) fn verify(msg: &[u8], key: &Key, cell_id: &[u8]) -> Result<Outcome, &'static str> {
    let Some(split) = msg.len().checked_sub(MAC_LEN) else {
        return Err(VERIFY_FAILED);
    };
    let (record, tag) = msg.split_at(split);
    if !ct_eq(&hmac_sha256(key, record), tag) {
        return Err(VERIFY_FAILED);
    }
    let rest = record
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(cell_id))
        .and_then(|r| r.strip_suffix(b"\n"))
        .ok_or("authenticated exit report is malformed or for another cell")?;
    let parse = |digits: &[u8]| std::str::from_utf8(digits).ok()?.parse::<i32>().ok();
    if let Some(code) = rest.strip_prefix(b" exit ").and_then(parse).filter(|c| (0..=255).contains(c)) {
        return Ok(Outcome::Exited(code));
    }
    if let Some(sig) = rest.strip_prefix(b" signal ").and_then(parse).filter(|s| (1..=64).contains(s)) {
        return Ok(Outcome::Signaled(sig));
    }
    Err("authenticated exit report is malformed or for another cell")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 1: 20 bytes of 0x0b.
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(hex(&mac), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    }

    #[test]
    fn round_trip_and_tampering() {
        let key = new_key().unwrap();
        let mut buf = [0u8; MAX_REPORT];
        for outcome in [Outcome::Exited(0), Outcome::Exited(255), Outcome::Signaled(9)] {
            let n = encode(&mut buf, &key, b"wl.1", outcome).unwrap();
            assert_eq!(verify(&buf[..n], &key, b"wl.1"), Ok(outcome));
            // Another cell's key, another cell id, a flipped bit, a truncation: all rejected.
            assert!(verify(&buf[..n], &new_key().unwrap(), b"wl.1").is_err());
            assert!(verify(&buf[..n], &key, b"wl.2").is_err());
            for i in 0..n {
                let mut bad = buf;
                bad[i] ^= 1;
                assert!(verify(&bad[..n], &key, b"wl.1").is_err(), "flip at {i}");
            }
            assert!(verify(&buf[..n - 1], &key, b"wl.1").is_err());
        }
        let n = encode(&mut buf, &key, b"wl.1", Outcome::Exited(3)).unwrap();
        assert_eq!(&buf[..n - MAC_LEN], b"warden-exit-v1 wl.1 exit 3\n");
        assert!(verify(b"", &key, b"wl.1").is_err());
        // A correctly tagged record with an impossible exit is still rejected.
        let mut len = 0;
        push(&mut buf, &mut len, b"warden-exit-v1 wl.1 exit 999\n").unwrap();
        let mac = hmac_sha256(&key, &buf[..len]);
        push(&mut buf, &mut len, &mac).unwrap();
        assert!(verify(&buf[..len], &key, b"wl.1").is_err());
        assert!(encode(&mut buf, &key, &[b'x'; 256], Outcome::Exited(0)).is_none());
        assert!(encode(&mut buf, &key, &[b'x'; 255], Outcome::Signaled(-1)).is_some());
    }
}
