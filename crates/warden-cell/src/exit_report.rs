//! The cell's authenticated exit report: one record `warden-exit-v1 <cell_id> exit <code>\n`
//! (or `signal <n>`) followed by HMAC-SHA256 of the record under the cell's one-time key. The
//! cell's init writes it in a single `write` (well below `PIPE_BUF`, so it is atomic); the shim
//! accepts an exit code only if the tag verifies, so nothing the workload can write — it never
//! holds the key nor the pipe — can pass for a real exit.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

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
    crate::sys::getrandom(&mut key)?;
    Ok(key)
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`. Allocation-free: the cell's init runs it.
/// Never `None` in fact (HMAC takes keys of any length, hashing a long one first), but the
/// init must not have a panic path.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Option<[u8; MAC_LEN]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    mac.update(msg);
    Some(mac.finalize().into_bytes().into())
}

/// Appends `bytes` to `out` at `*len`; no allocation (the init runs this).
fn push(out: &mut [u8], len: &mut usize, bytes: &[u8]) -> Option<()> {
    out.get_mut(*len..*len + bytes.len())?.copy_from_slice(bytes);
    *len += bytes.len();
    Some(())
}

/// Appends decimal `n` to `out` at `*len`; no allocation either.
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
    let mac = hmac_sha256(key, &out[..len])?;
    push(out, &mut len, &mac)?;
    Some(len)
}

/// Why a report was rejected; becomes the exit's `detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum VerifyError {
    /// The tag does not match (or there is none): not written by the cell's init.
    #[error("exit report failed verification")]
    BadTag,
    /// The tag matches, but the record is not a possible exit of this cell.
    #[error("authenticated exit report is malformed or for another cell")]
    Malformed,
}

/// Checks the tag (constant time) before looking at anything else, then that the record is
/// well-formed, for this cell, and a possible exit: code 0..=255 or a real signal number.
pub(crate) fn verify(msg: &[u8], key: &Key, cell_id: &[u8]) -> Result<Outcome, VerifyError> {
    let Some(split) = msg.len().checked_sub(MAC_LEN) else {
        return Err(VerifyError::BadTag);
    };
    let (record, tag) = msg.split_at(split);
    // Constant time, so timing does not tell how many leading bytes of a forged tag matched.
    let expected = hmac_sha256(key, record).ok_or(VerifyError::BadTag)?;
    if !bool::from(expected.as_slice().ct_eq(tag)) {
        return Err(VerifyError::BadTag);
    }
    let rest = record
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(cell_id))
        .and_then(|r| r.strip_suffix(b"\n"))
        .ok_or(VerifyError::Malformed)?;
    let parse = |digits: &[u8]| std::str::from_utf8(digits).ok()?.parse::<i32>().ok();
    if let Some(code) = rest.strip_prefix(b" exit ").and_then(parse).filter(|c| (0..=255).contains(c)) {
        return Ok(Outcome::Exited(code));
    }
    if let Some(sig) = rest.strip_prefix(b" signal ").and_then(parse).filter(|s| (1..=64).contains(s)) {
        return Ok(Outcome::Signaled(sig));
    }
    Err(VerifyError::Malformed)
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
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 1: 20 bytes of 0x0b.
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There").unwrap();
        assert_eq!(hex(&mac), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        // Test case 3: 20 bytes of 0xaa, 50 bytes of 0xdd.
        let mac = hmac_sha256(&[0xaa; 20], &[0xdd; 50]).unwrap();
        assert_eq!(hex(&mac), "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
        // Test case 6: a key longer than a block is hashed first.
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First").unwrap();
        assert_eq!(hex(&mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn the_wire_format_is_that_of_warden_exit_v1() {
        // Tags computed by the hand-written HMAC this module had before: a shim of that version
        // must still be understood (and understand the new init).
        let key: Key = std::array::from_fn(|i| i as u8);
        let mut buf = [0u8; MAX_REPORT];
        let cases = [
            (&b"wl.1"[..], Outcome::Exited(3), "c1bbece75285b81a1e81ae4f069d9883c15b6607fd751508051cc751d66c15fa"),
            (&b"web.7"[..], Outcome::Signaled(9), "927ae42f575bdff454e776699d54204d7be36f2180d73f15f5972b773925ff13"),
        ];
        for (cell_id, outcome, tag) in cases {
            let n = encode(&mut buf, &key, cell_id, outcome).unwrap();
            let record = format!(
                "warden-exit-v1 {} {}\n",
                std::str::from_utf8(cell_id).unwrap(),
                match outcome {
                    Outcome::Exited(code) => format!("exit {code}"),
                    Outcome::Signaled(sig) => format!("signal {sig}"),
                }
            );
            assert_eq!(&buf[..n - MAC_LEN], record.as_bytes());
            assert_eq!(hex(&buf[n - MAC_LEN..n]), tag);
            assert_eq!(verify(&buf[..n], &key, cell_id), Ok(outcome));
        }
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
        let mac = hmac_sha256(&key, &buf[..len]).unwrap();
        push(&mut buf, &mut len, &mac).unwrap();
        assert!(verify(&buf[..len], &key, b"wl.1").is_err());
        assert!(encode(&mut buf, &key, &[b'x'; 256], Outcome::Exited(0)).is_none());
        assert!(encode(&mut buf, &key, &[b'x'; 255], Outcome::Signaled(-1)).is_some());
    }
}
