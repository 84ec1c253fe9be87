//! Who the managed nginx's workers run as when cutover runs as root: an unprivileged
//! account (`www-data`, which Debian's nginx package creates, else `nobody`), never
//! root.
//!
//! Workers open nothing of the config (the master reads it and opens the logs), but
//! they write request and response buffers to the temp paths. Those cannot sit in the
//! state directory: it is 0700, and so may be a directory above it (`/root`). So the
//! workers' temp directory is `/run/cutover-nginx/<hash of the prefix>/`: `/run` is
//! writable by root only, so no other user can have planted a link there, and the
//! directory is the workers' own (mode 0700).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the workers' temp directories live.
const RUN_DIR: &str = "/run/cutover-nginx";
/// The accounts tried, in order.
const ACCOUNTS: [&str; 2] = ["www-data", "nobody"];

/// The account the workers run as, and their temp directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Workers {
    /// For nginx's `user` directive: `user group`.
    pub(crate) user: String,
    /// The workers' temp directory.
    pub(crate) temp: PathBuf,
}

/// The workers' temp directory for the nginx with `prefix`.
pub(crate) fn temp_dir(prefix: &Path) -> PathBuf {
    // FNV-1a: a short stable name per prefix; not a secret, only a name.
    let hash = prefix
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    Path::new(RUN_DIR).join(format!("{hash:016x}"))
}

/// Picks the account and makes its temp directory for the nginx with `prefix`.
///
/// # Errors
/// Why not, naming the path: no account found, or the directory cannot be made hers.
pub(crate) fn prepare(prefix: &Path) -> Result<Workers, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let (name, uid, gid) = ACCOUNTS
        .iter()
        .find_map(|name| account(&passwd, name))
        .ok_or_else(|| {
            "neither `www-data` nor `nobody` is in /etc/passwd; the managed nginx's workers need an unprivileged account (`useradd --system www-data`)".to_owned()
        })?;
    let group_name = group_of(&group, gid).unwrap_or_else(|| gid.to_string());
    let temp = temp_dir(prefix);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(RUN_DIR)
        .map_err(|e| format!("cannot create {RUN_DIR}: {e}"))?;
    match std::fs::DirBuilder::new().mode(0o700).create(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", temp.display())),
    }
    // Not followed if it is a link: only a real directory is handed over.
    let meta = std::fs::symlink_metadata(&temp).map_err(|e| format!("{}: {e}", temp.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory; remove it", temp.display()));
    }
    rustix::fs::chown(
        &temp,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| format!("cannot give {} to {name}: {e}", temp.display()))?;
    if meta.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", temp.display()))?;
    }
    Ok(Workers {
        user: format!("{name} {group_name}"),
        temp,
    })
}

/// Removes the workers' temp directory of the nginx with `prefix` (after it stopped).
pub(crate) fn remove(prefix: &Path) {
    let _ = std::fs::remove_dir_all(temp_dir(prefix));
}

/// `name`'s uid and gid in `passwd` (the text of /etc/passwd).
fn account<'a>(passwd: &str, name: &'a str) -> Option<(&'a str, u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        (uid != 0).then_some((name, uid, gid))
    })
}

/// The name of group `gid` in `group` (the text of /etc/group).
fn group_of(group: &str, gid: u32) -> Option<String> {
    group.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.parse::<u32>().ok()? == gid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_unprivileged_account_and_its_group_by_number() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        let group = "root:x:0:\nnogroup:x:65534:\n";
        let found = ACCOUNTS.iter().find_map(|n| account(passwd, n));
        assert_eq!(found, Some(("nobody", 65534, 65534)));
        assert_eq!(group_of(group, 65534).as_deref(), Some("nogroup"));
        // A `www-data` with uid 0 is not unprivileged.
        assert_eq!(account("www-data:x:0:0::/:/bin/sh\n", "www-data"), None);
    }

    #[test]
    fn each_prefix_has_its_own_temp_directory_under_run() {
        let a = temp_dir(Path::new("/srv/a/.cutover/nginx"));
        let b = temp_dir(Path::new("/srv/b/.cutover/nginx"));
        assert_ne!(a, b);
        assert!(a.starts_with(RUN_DIR), "{}", a.display());
        assert_eq!(a, temp_dir(Path::new("/srv/a/.cutover/nginx")));
    }
}
