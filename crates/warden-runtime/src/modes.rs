//! File modes of a data dir: the dir itself 0711 (cells, which run as other users, may pass
//! through to their job contexts but list nothing), secrets and cell configs 0600, logs 0640.
//! New files are created with these modes where they are written (`warden_store::sqlite::
//! make_private`, `warden_cell`'s cell records and log sink); `tighten` brings a data dir of an
//! older version (0755 dir, 0644 files) into line at start.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Sets `data_dir` to 0711, every file under `cells/` to 0600 and every file under `logs/` to
/// 0640. Files whose mode is already tighter are left alone.
///
/// Why 0711 and not 0700: a job step's context (`jobs/<run>/<state>.<n>/context.json`) and a
/// hot standby's role file (`cells/<id>/role`) must be reachable by the cell's unprivileged
/// user. Execute-only lets it pass to those (owned by it, or world-readable and secret-free)
/// and to nothing else: it cannot list the dir, and every file with a secret is 0600 root.
pub fn tighten(data_dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o711))?;
    // Passable like the data dir, not listable: a hot standby reaches its role file by path.
    for dir in ["cells", "logs", "jobs", "keys"] {
        let dir = data_dir.join(dir);
        if dir.is_dir() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        }
    }
    tighten_files(&data_dir.join("cells"), 0o600);
    tighten_files(&data_dir.join("logs"), 0o640);
    Ok(())
}

/// Best effort: a file that vanishes while we walk (a cell ending) is no error.
fn tighten_files(dir: &Path, mode: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            tighten_files(&entry.path(), mode);
        } else if meta.is_file() && meta.permissions().mode() & 0o777 & !mode != 0 {
            let tighter = meta.permissions().mode() & 0o777 & mode;
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(tighter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_data_dir_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("cells/c1")).unwrap();
        std::fs::create_dir_all(data.join("logs")).unwrap();
        let set = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        std::fs::write(data.join("cells/c1/config.json"), "{}").unwrap();
        std::fs::write(data.join("logs/w.log"), "x").unwrap();
        std::fs::write(data.join("logs/exec.sh"), "x").unwrap();
        set(&data, 0o755);
        set(&data.join("cells/c1/config.json"), 0o644);
        set(&data.join("logs/w.log"), 0o644);
        set(&data.join("logs/exec.sh"), 0o700);
        tighten(&data).unwrap();
        assert_eq!(mode(&data), 0o711, "passable, not listable");
        assert_eq!(mode(&data.join("cells")), 0o711);
        assert_eq!(mode(&data.join("cells/c1/config.json")), 0o600);
        assert_eq!(mode(&data.join("logs/w.log")), 0o640);
        assert_eq!(mode(&data.join("logs/exec.sh")), 0o600, "only bits are taken away");
    }
}
