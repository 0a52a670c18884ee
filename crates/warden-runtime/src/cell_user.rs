//! Who cells run as on this host: the default cell user (the `warden` system user, created at
//! start when warden runs as root), a spec's `user` resolved to ids here (names are looked up
//! in this host's user database, at the cell's start), and handing a cell the directories it
//! must write (chown).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
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
///
/// The walk never follows a symbolic link, also not one swapped in while it walks (another
/// cell of the same user could try, to have root chown e.g. `/etc`): every directory is opened
/// relative to its parent's descriptor with `O_NOFOLLOW`, listed through that descriptor, and
/// changed with `fchown`; anything else is changed with `fchownat(AT_SYMLINK_NOFOLLOW)`.
pub fn hand_over(dir: &Path, user: warden_cell::CellUser) -> std::io::Result<()> {
    if user.is_root() || own_ids().0 != 0 {
        return Ok(());
    }
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let top = open_dir_no_follow(libc::AT_FDCWD, &path)?;
    chown_tree(&top, user)
}

fn open_dir_no_follow(parent: RawFd, name: &CStr) -> std::io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: `name` is NUL-terminated; `parent` is AT_FDCWD or a descriptor the caller holds.
    let fd = unsafe { libc::openat(parent, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn chown_tree(dir: &OwnedFd, user: warden_cell::CellUser) -> std::io::Result<()> {
    std::os::unix::fs::fchown(dir, Some(user.uid), Some(user.gid))?;
    // Listed through the descriptor: the directory opened, whatever its path now names.
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        let name = CString::new(entry?.file_name().as_bytes()).expect("a file name has no NUL");
        match open_dir_no_follow(dir.as_raw_fd(), &name) {
            Ok(child) => chown_tree(&child, user)?,
            // Not a directory, or a symbolic link: the entry itself.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                // SAFETY: `name` is NUL-terminated and `dir` is open.
                let ret =
                    unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), user.uid, user.gid, libc::AT_SYMLINK_NOFOLLOW) };
                if ret < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_handed_over_tree_is_the_users_and_a_symlink_in_it_is_never_followed() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "root's").unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/file"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("a/link")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), dir.join("dirlink")).unwrap();
        let user = warden_cell::CellUser { uid: 4321, gid: 1234 };
        hand_over(&dir, user).unwrap();
        for path in ["", "a", "a/b", "a/b/file", "a/link", "dirlink"] {
            let meta = std::fs::symlink_metadata(dir.join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4321, 1234), "{path:?}");
        }
        let untouched = std::fs::metadata(&outside).unwrap();
        assert_eq!((untouched.uid(), untouched.gid()), (0, 0), "a link's target stays root's");
        assert_eq!(std::fs::metadata(tmp.path()).unwrap().uid(), 0);
        // A symlink as the dir itself is refused, not followed.
        assert!(hand_over(&dir.join("dirlink"), user).is_err());
    }
}
