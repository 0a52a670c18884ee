//! What the sections share: processes, the control plane, statistics and the table.

pub(crate) mod control_plane;
pub(crate) mod process;
pub(crate) mod stats;
pub(crate) mod table;

/// A directory under `root` that cells, which run as the unprivileged `warden` user, may write
/// to (mode 1777, like /tmp), with `root` made passable (0755; a temp dir is 0700).
pub(crate) fn shared_dir(root: &std::path::Path, name: &str) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))?;
    Ok(dir)
}
