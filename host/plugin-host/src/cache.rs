//! The on-disk cache of compiled plugins, so a deploy loads machine code in well under
//! a millisecond instead of compiling each plugin again (tens of milliseconds).
//!
//! An entry is keyed by the plugin's sha256 and the engine's precompile
//! compatibility hash, and is only ever loaded when this host wrote it: the cache
//! directory must be owned by the current user and writable by nobody else, every file
//! is opened relative to that directory without following symlinks and must be ours
//! and not group/other-writable, and the compiled bytes must match the checksum
//! written beside them. On any doubt the cache answers "miss" and the plugin is
//! compiled again; this module never fails a deploy.
//!
//! The checksum is a CRC-32, not a cryptographic hash: what makes an entry trusted
//! is that only this user can have written it (the ownership and mode checks); the
//! checksum only has to catch a torn or corrupted write, which CRC-32 does at ~10
//! GB/s, where sha256 took a quarter of a warm start.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Bump when the layout of entries changes, so old entries are simply never read.
const FORMAT: &str = "v2";

/// A compiled plugin is a few hundred KiB; anything far larger is not ours.
const MAX_ENTRY_BYTES: u64 = 256 << 20;

/// The directory the cache lives in when the caller does not choose one:
/// `$CUTOVER_CACHE_DIR`, else `$XDG_CACHE_HOME/cutover`, else `~/.cache/cutover`.
pub fn default_dir() -> Option<PathBuf> {
    let from_env = |key: &str| {
        std::env::var_os(key)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    from_env("CUTOVER_CACHE_DIR")
        .or_else(|| from_env("XDG_CACHE_HOME").map(|p| p.join("cutover")))
        .or_else(|| from_env("HOME").map(|p| p.join(".cache").join("cutover")))
}

/// A usable cache directory.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    /// The engine's compatibility hash, part of every key.
    engine_key: String,
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn crc32_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

fn is_ours_and_private(stat: &rustix::fs::Stat) -> bool {
    stat.st_uid == rustix::process::geteuid().as_raw() && stat.st_mode & 0o022 == 0
}

fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

impl DiskCache {
    /// Opens (creating with mode 0700 if needed) the cache under `root`.
    ///
    /// # Errors
    /// Why the directory cannot be used, for a log line; the caller then runs without
    /// a cache.
    pub fn open(root: &Path, engine: &Engine) -> Result<DiskCache, String> {
        let dir = root.join("plugins");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let fd = open_dir(&dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
        let stat =
            rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
        if !is_ours_and_private(&stat) {
            return Err(format!(
                "{} is not owned by this user or is writable by others; cutover only loads \
                 compiled code it wrote itself (fix: `chmod 700` it, or remove it)",
                dir.display()
            ));
        }
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(DiskCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    /// The directory entries are kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_name(&self, sha256: &str) -> String {
        format!("{sha256}-{}-{FORMAT}.cwasm", self.engine_key)
    }

    /// The compiled plugin whose wasm has digest `sha256`, when a trustworthy entry
    /// exists.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let name = self.entry_name(sha256);
        let dir = open_dir(&self.dir).ok()?;
        // Re-check at use: the directory may have been replaced since `open`.
        if !is_ours_and_private(&rustix::fs::fstat(&dir).ok()?) {
            return None;
        }
        let code = read_private(&dir, &name)?;
        let checksum = read_private(&dir, &format!("{name}.crc32"))?;
        if checksum.trim_ascii() != crc32_hex(&code).as_bytes() {
            return None;
        }
        deserialize_verified(engine, &code)
    }

    /// Stores `component` (compiled from wasm with digest `sha256`).
    ///
    /// # Errors
    /// Why it could not be stored, for a debug log line; nothing depends on it.
    pub fn store(&self, sha256: &str, component: &Component) -> Result<(), String> {
        let code = component
            .serialize()
            .map_err(|e| format!("cannot serialize compiled code: {e}"))?;
        let name = self.entry_name(sha256);
        let dir = open_dir(&self.dir).map_err(|e| e.to_string())?;
        // The code first, its checksum last: an entry is only read once both exist and
        // agree, so a crash or a concurrent writer leaves a miss, never a bad load.
        write_private(&dir, &name, &code)?;
        write_private(&dir, &format!("{name}.crc32"), crc32_hex(&code).as_bytes())
    }
}

/// Reads `name` in `dir` when it is a regular file owned by us and not writable by
/// others; `None` otherwise.
fn read_private(dir: &OwnedFd, name: &str) -> Option<Vec<u8>> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstat(&fd).ok()?;
    let size = u64::try_from(stat.st_size).ok()?;
    let regular =
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
    if !regular || !is_ours_and_private(&stat) || size > MAX_ENTRY_BYTES {
        return None;
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).ok()?);
    File::from(fd).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Writes `name` in `dir` with mode 0600 through a uniquely named temporary file and
/// a rename.
///
/// This is not `atomic_file::write`: a cache entry is disposable and verified on
/// every load, so it needs no fsync (a crash leaves a miss), but it does need
/// directory-relative, symlink-refusing opens and a temporary name unique per thread,
/// since parallel loads in one process may store the same entry.
fn write_private(dir: &OwnedFd, name: &str, contents: &[u8]) -> Result<(), String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let result = (|| -> std::io::Result<()> {
        let fd = rustix::fs::openat(
            dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        File::from(fd).write_all(contents)?;
        rustix::fs::renameat(dir, &tmp, dir, name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, &tmp, rustix::fs::AtFlags::empty());
    }
    result.map_err(|e| format!("cannot write cache entry {name}: {e}"))
}

/// Turns bytes this host serialized back into a component.
#[allow(unsafe_code)]
fn deserialize_verified(engine: &Engine, code: &[u8]) -> Option<Component> {
    // SAFETY: `Component::deserialize` trusts its input to be machine code produced by
    // a compatible wasmtime. Every caller passes bytes read from a directory and file
    // owned by this user and writable by nobody else (checked on the open descriptors,
    // opened without following symlinks), and whose CRC-32 equals the checksum this
    // host wrote beside them after serializing them itself (so they are not torn). Only this user (or root)
    // could have written them, i.e. they are our own `Component::serialize` output.
    // wasmtime additionally refuses bytes from an incompatible engine or version.
    unsafe { Component::deserialize(engine, code) }.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn engine() -> Engine {
        Engine::default()
    }

    /// A tiny component (the empty one) serialized and cached.
    fn empty_component(engine: &Engine) -> Component {
        // The binary encoding of `(component)`.
        Component::new(engine, b"\0asm\x0d\0\x01\0").expect("empty component")
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let root = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = DiskCache::open(root.path(), &engine).unwrap();
        let digest = "ab".repeat(32);
        assert!(cache.load(&engine, &digest).is_none());
        cache.store(&digest, &empty_component(&engine)).unwrap();
        assert!(cache.load(&engine, &digest).is_some());

        // Changing one byte of the code makes it a miss, not a load.
        let entry = cache.dir().join(cache.entry_name(&digest));
        let mut bytes = std::fs::read(&entry).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&entry, &bytes).unwrap();
        assert!(cache.load(&engine, &digest).is_none());
    }

    #[test]
    fn entries_writable_by_others_are_ignored() {
        let root = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = DiskCache::open(root.path(), &engine).unwrap();
        let digest = "cd".repeat(32);
        cache.store(&digest, &empty_component(&engine)).unwrap();
        let entry = cache.dir().join(cache.entry_name(&digest));
        assert_eq!(
            std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(cache.load(&engine, &digest).is_none());
    }

    #[test]
    fn symlinked_entries_are_ignored() {
        let root = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = DiskCache::open(root.path(), &engine).unwrap();
        let digest = "ef".repeat(32);
        cache.store(&digest, &empty_component(&engine)).unwrap();
        let entry = cache.dir().join(cache.entry_name(&digest));
        let moved = root.path().join("elsewhere");
        std::fs::rename(&entry, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &entry).unwrap();
        assert!(cache.load(&engine, &digest).is_none());
    }

    #[test]
    fn a_directory_writable_by_others_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = DiskCache::open(root.path(), &engine()).unwrap_err();
        assert!(err.contains("writable by others"), "{err}");
    }
}
