//! Who cells run as on this host: the default cell user (the `warden` system user, created at
//! start when warden runs as root), a spec's `user` resolved to ids here (names are looked up
//! in this host's user database, at the cell's start), and handing a cell the directories it
//! must write (chown).

use std::ffi::CString;
use std::path::Path;

use warden_core::spec::CellUser as SpecUser;

/// The system user cells run as by default when warden runs as root.
pub const DEFAULT_CELL_USER: &str = "warden";

/// Why a cell's user cannot be resolved on this host; the cell's start fails with it.
#[derive(Debug, thiserror::Error)]
pub enum CellUserError {
    #[error("cell user {name:?} does not exist on this host (add it, or use user = \"uid:gid\")")]
    NoSuchUser { name: String },
    #[error(
        "the default cell user {DEFAULT_CELL_USER:?} does not exist on this host (warden creates it when it starts as root)"
    )]
    NoDefaultUser,
    #[error("cannot look up user {name:?}")]
    Lookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// Warden not running as root can only run cells as itself.
    #[error("cell user {wanted} needs warden to run as root: it runs as uid {uid} gid {gid} and cannot switch users (leave `user` out to run the cell as uid {uid})")]
    CannotSwitch { wanted: String, uid: u32, gid: u32 },
}

/// Why the default cell user could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("cannot run useradd to create the cell user {DEFAULT_CELL_USER:?} (Debian: apt-get install passwd)")]
    Spawn(#[source] std::io::Error),
    #[error("useradd failed to create the cell user {DEFAULT_CELL_USER:?}: {stderr}")]
    Failed { stderr: String },
    #[error(transparent)]
    Lookup(#[from] CellUserError),
}

/// `geteuid`/`getegid` of this process.
fn own_ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid take no arguments and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Makes sure the default cell user exists when warden runs as root: creates the system user
/// `warden` (no home, no login shell, its own primary group) if absent, and says so. Returns
/// its ids (or, not root, warden's own: the user cells then run as).
pub fn ensure_default_user() -> Result<warden_cell::CellUser, CreateUserError> {
    let (uid, gid) = own_ids();
    if uid != 0 {
        return Ok(warden_cell::CellUser { uid, gid });
    }
    if let Some(user) = lookup(DEFAULT_CELL_USER)? {
        return Ok(user);
    }
    let output = std::process::Command::new("useradd")
        .args(["--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", DEFAULT_CELL_USER])
        .output()
        .map_err(CreateUserError::Spawn)?;
    // Two wardens starting at once on one host: the loser's useradd fails, the user exists.
    if let Some(user) = lookup(DEFAULT_CELL_USER)? {
        if output.status.success() {
            tracing::info!(
                uid = user.uid,
                gid = user.gid,
                "created the system user {DEFAULT_CELL_USER:?}, which cells run as by default"
            );
        }
        return Ok(user);
    }
    Err(CreateUserError::Failed { stderr: String::from_utf8_lossy(&output.stderr).trim().to_string() })
}

/// The ids a cell with this `user` runs as on this host. Absent: the default cell user when
/// warden is root, else warden's own user. Not root, warden can run cells only as itself.
pub fn resolve(user: Option<&SpecUser>) -> Result<warden_cell::CellUser, CellUserError> {
    let (own_uid, own_gid) = own_ids();
    let resolved = match user {
        None if own_uid == 0 => lookup(DEFAULT_CELL_USER)?.ok_or(CellUserError::NoDefaultUser)?,
        None => return Ok(warden_cell::CellUser { uid: own_uid, gid: own_gid }),
        Some(SpecUser::Root) => warden_cell::CellUser::ROOT,
        Some(SpecUser::Name(name)) => lookup(name)?.ok_or_else(|| CellUserError::NoSuchUser { name: name.clone() })?,
        Some(SpecUser::Ids { uid, gid }) => warden_cell::CellUser { uid: *uid, gid: gid.unwrap_or(*uid) },
    };
    if own_uid != 0 && (resolved.uid, resolved.gid) != (own_uid, own_gid) {
        let wanted =
            user.map_or_else(|| DEFAULT_CELL_USER.to_string(), |u| format!("{u:?} (uid {} gid {})", resolved.uid, resolved.gid));
        return Err(CellUserError::CannotSwitch { wanted, uid: own_uid, gid: own_gid });
    }
    Ok(resolved)
}

/// `getpwnam_r`: the user's uid and primary gid, `None` if there is no such user.
fn lookup(name: &str) -> Result<Option<warden_cell::CellUser>, CellUserError> {
    let lookup_err = |source| CellUserError::Lookup { name: name.to_string(), source };
    let c_name = CString::new(name).map_err(|_| lookup_err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let mut buf = vec![0u8; 4096];
    loop {
        let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `entry` and
        // `buf` are writable with the length given, `found` is a local out-pointer.
        let ret =
            unsafe { libc::getpwnam_r(c_name.as_ptr(), entry.as_mut_ptr(), buf.as_mut_ptr().cast(), buf.len(), &mut found) };
        match ret {
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            0 if found.is_null() => return Ok(None),
            0 => {
                // SAFETY: on success with a non-null result, getpwnam_r initialised `entry`.
                let entry = unsafe { entry.assume_init() };
                return Ok(Some(warden_cell::CellUser { uid: entry.pw_uid, gid: entry.pw_gid }));
            }
            // Not found is 0 with a null result; these say the database has no such entry too.
            libc::ENOENT | libc::ESRCH => return Ok(None),
            errno => return Err(lookup_err(std::io::Error::from_raw_os_error(errno))),
        }
    }
}

/// Gives `dir` (and everything under it) to the cell's user, so the cell can write what warden
/// prepared for it (a job step's context dir, a checkpointed workload's state dir). A no-op for
/// root and when warden is not root (it could not, and the cell runs as warden then).
pub fn hand_over(dir: &Path, user: warden_cell::CellUser) -> std::io::Result<()> {
    if user.is_root() || own_ids().0 != 0 {
        return Ok(());
    }
    std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            hand_over(&entry?.path(), user)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    /// The name of `uid` on this host, to check a resolution against.
    fn name_of(uid: u32) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: as in `lookup`.
        let ret = unsafe { libc::getpwuid_r(uid, entry.as_mut_ptr(), buf.as_mut_ptr().cast(), buf.len(), &mut found) };
        if ret != 0 || found.is_null() {
            return None;
        }
        // SAFETY: success with a non-null result: `entry` is initialised and `pw_name` points into `buf`.
        let name = unsafe { CStr::from_ptr(entry.assume_init().pw_name) };
        Some(name.to_string_lossy().into_owned())
    }

    #[test]
    fn names_and_ids_resolve_as_this_host_says() {
        // Every Debian system has root and nobody.
        assert_eq!(resolve(Some(&SpecUser::Root)).unwrap(), warden_cell::CellUser::ROOT);
        let nobody = resolve(Some(&SpecUser::Name("nobody".into()))).unwrap();
        assert_eq!(name_of(nobody.uid).as_deref(), Some("nobody"));
        assert_eq!(
            resolve(Some(&SpecUser::Ids { uid: 1234, gid: None })).unwrap(),
            warden_cell::CellUser { uid: 1234, gid: 1234 }
        );
        assert_eq!(
            resolve(Some(&SpecUser::Ids { uid: 1234, gid: Some(99) })).unwrap(),
            warden_cell::CellUser { uid: 1234, gid: 99 }
        );
        let missing = resolve(Some(&SpecUser::Name("no-such-user-here".into()))).unwrap_err();
        assert!(missing.to_string().contains("\"no-such-user-here\" does not exist"), "{missing}");
    }
}
