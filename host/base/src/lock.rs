//! The per-service deploy lock: one deploy, rollback or recovery at a time.
//!
//! Mutual exclusion comes from an advisory `flock` on `<state_dir>/lock`, which the
//! kernel releases the moment the holder dies, so a crashed or SIGKILLed runner can
//! never block the next one. The same file carries the owner (host, pid, start time,
//! CI run URL) and a lease renewed while the deploy runs, so a refused runner can say
//! who holds the lock and whether the holder still looks alive. The owner record is
//! cleared on a clean release; finding one left behind when the lock is free means
//! its owner died, and the takeover is reported.
//!
//! This module never breaks a lock that a live process holds.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::retry::{self, Deadline, Retryable};

/// The lock file's name inside the state directory.
pub const FILE_NAME: &str = "lock";

/// How long an owner's lease runs before it must be renewed. A background task of
/// the holder renews it every third of this, however long a step (a build, a health
/// wait) takes.
pub const LEASE: Duration = Duration::from_secs(60);

/// Who holds (or held) the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// When it took the lock (RFC 3339).
    pub started_at: String,
    /// What it runs (`deploy`, `rollback`, ...).
    pub command: String,
    /// The CI run's URL, when cutover runs in CI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_url: Option<String>,
    /// The lease's end (RFC 3339); stamped at every take and renewed while the owner
    /// works.
    pub lease_until: String,
    /// Which boot of which PID namespace the pid belongs to (the kernel's boot id and
    /// the namespace's inode): the same host name in a container, or after a reboot,
    /// is another pid space. Absent in records written by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_space: Option<String>,
}

impl Owner {
    /// An owner record for this process.
    pub fn this_process(command: &str, run_url: Option<String>) -> Owner {
        Owner {
            host: hostname(),
            pid: std::process::id(),
            started_at: crate::now_rfc3339(),
            command: command.to_owned(),
            run_url,
            lease_until: lease_from_now(LEASE),
            pid_space: pid_space(),
        }
    }

    /// This owner with a lease of `lease` from now: written at every take, so a runner
    /// that waited for the lock longer than a lease never writes one that already ran
    /// out.
    pub fn with_lease(&self, lease: Duration) -> Owner {
        Owner {
            lease_until: lease_from_now(lease),
            ..self.clone()
        }
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "`{}` by pid {} on {} since {}",
            self.command, self.pid, self.host, self.started_at
        );
        if let Some(url) = &self.run_url {
            s.push_str(&format!(" ({url})"));
        }
        s
    }

    /// Whether the lease has run out.
    pub fn lease_expired(&self) -> bool {
        rfc3339_passed(&self.lease_until)
    }

    /// Whether this owner is known to be gone: it ran in this very pid space (this
    /// host, this boot, this PID namespace) and its process no longer exists.
    /// Anywhere else only its lease can tell: a container with the host's name, or a
    /// record without a pid space, is "not gone", the safe answer; so is a reused pid.
    pub fn gone_from_this_host(&self) -> bool {
        let here = pid_space();
        self.host == hostname()
            && here.is_some()
            && self.pid_space == here
            && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error("{}", held_message(.service, .owner.as_deref(), *.waited))]
    Held {
        /// The service.
        service: String,
        /// The holder, when its record could be read.
        owner: Option<Box<Owner>>,
        /// How long this process waited.
        waited: Duration,
    },
    /// The lock file could not be opened or written.
    #[error("cannot use lock file {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn held_message(service: &str, owner: Option<&Owner>, waited: Duration) -> String {
    let who = owner.map_or_else(|| "another process".to_owned(), Owner::describe);
    let mut msg = format!("another deploy of `{service}` is running: {who}");
    if !waited.is_zero() {
        msg.push_str(&format!(
            "; still held after waiting {}",
            humantime::format_duration(waited)
        ));
    }
    if owner.is_some_and(Owner::lease_expired) {
        msg.push_str(
            "; its lease has expired, so it may be hung: check that process and stop it if it is stuck",
        );
    } else {
        msg.push_str("; wait for it to finish, or pass --lock-wait <duration> to queue behind it");
    }
    msg
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct LocalLock {
    file: File,
    path: PathBuf,
    owner: Owner,
    renewer: tokio::task::JoinHandle<()>,
    /// The owner record found in the file when the lock was taken: a holder that died.
    pub taken_over: Option<Owner>,
}

impl LocalLock {
    /// Takes the lock in `dir` for `service`, waiting up to `wait` when it is held.
    ///
    /// # Errors
    /// [`LockError::Held`] when another live process still holds it after `wait`;
    /// [`LockError::Io`] when the lock file cannot be used.
    pub async fn acquire(
        dir: &Path,
        service: &str,
        owner: Owner,
        wait: Duration,
    ) -> Result<LocalLock, LockError> {
        let path = dir.join(FILE_NAME);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // Held by another process: tried again every 100 ms until `wait` has passed.
        let deadline = Deadline::after(wait);
        let locked = (|| async { file.try_lock() })
            .retry(retry::every(Duration::from_millis(100)))
            .when(|e| matches!(e, std::fs::TryLockError::WouldBlock) && deadline.open())
            .await;
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    service: service.to_owned(),
                    owner: read_owner(&mut file).map(Box::new),
                    waited: wait,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let taken_over = read_owner(&mut file);
        let owner = owner.with_lease(LEASE);
        write_owner(&file, &owner).map_err(io)?;
        let renewer = tokio::spawn(renew_forever(file.try_clone().map_err(io)?, owner.clone()));
        Ok(LocalLock {
            file,
            path,
            owner,
            renewer,
            taken_over,
        })
    }

    /// The owner record this lock carries.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Rewrites the owner record with a fresh lease every third of [`LEASE`].
async fn renew_forever(file: File, mut owner: Owner) {
    let mut tick = tokio::time::interval(LEASE / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        owner.lease_until = lease_from_now(LEASE);
        // A failed renewal only makes the record look stale to a refused runner's
        // message; the flock still protects the service.
        let _ = write_owner(&file, &owner);
    }
}

/// Writes the record at offset 0 and then trims the file, so a reader never sees an
/// empty file while a holder is alive (pwrite: the cloned handles share an offset).
fn write_owner(file: &File, owner: &Owner) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let json = serde_json::to_vec(owner).expect("owner always serializes");
    file.write_all_at(&json, 0)?;
    file.set_len(json.len() as u64)?;
    file.sync_data()
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        self.renewer.abort();
        // An empty file tells the next holder that this one finished cleanly; the
        // flock itself goes away when the file is closed.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Reads the owner record of the lock in `dir` without taking it (for `status`).
pub fn current_owner(dir: &Path) -> Option<Owner> {
    let mut file = File::open(dir.join(FILE_NAME)).ok()?;
    match file.try_lock_shared() {
        // Nobody holds it: whatever the file says is a dead owner's record.
        Ok(()) => None,
        Err(_) => read_owner(&mut file),
    }
}

fn read_owner(file: &mut File) -> Option<Owner> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// The RFC 3339 time `lease` from now.
pub fn lease_from_now(lease: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + lease).to_string()
}

/// Whether the RFC 3339 time `at` has passed (an unreadable one has not).
pub fn rfc3339_passed(at: &str) -> bool {
    humantime::parse_rfc3339(at).is_ok_and(|t| t < SystemTime::now())
}

/// This process's pid space: the boot id and the PID namespace's inode, or `None`
/// where the kernel does not tell (then no holder is ever judged gone by its pid).
fn pid_space() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), ns.display()))
}

/// This machine's host name, for owner records.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_acquire_is_refused_with_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Owner::this_process("deploy", Some("https://ci/run/7".to_owned()));
        let _held = LocalLock::acquire(dir.path(), "hello", owner, Duration::ZERO)
            .await
            .unwrap();
        let err = LocalLock::acquire(
            dir.path(),
            "hello",
            Owner::this_process("deploy", None),
            Duration::from_millis(250),
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("https://ci/run/7"), "{msg}");
        assert!(msg.contains("waiting 250ms"), "{msg}");
        assert!(current_owner(dir.path()).is_some());
    }

    #[tokio::test]
    async fn released_lock_is_free_and_not_a_takeover() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalLock::acquire(
            dir.path(),
            "hello",
            Owner::this_process("deploy", None),
            Duration::ZERO,
        )
        .await
        .unwrap();
        drop(first);
        assert!(current_owner(dir.path()).is_none());
        let second = LocalLock::acquire(
            dir.path(),
            "hello",
            Owner::this_process("deploy", None),
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert!(second.taken_over.is_none());
    }

    #[test]
    fn a_dead_pid_counts_as_gone_only_in_this_pid_space() {
        let dead = Owner {
            pid: 999_999,
            ..Owner::this_process("deploy", None)
        };
        assert!(dead.gone_from_this_host());
        // The same host name in a container (another PID namespace), or after a
        // reboot: pid 999999 there says nothing about a process here.
        let elsewhere = Owner {
            pid_space: Some("another-boot/pid:[4026531836]".to_owned()),
            ..dead.clone()
        };
        assert!(!elsewhere.gone_from_this_host());
        let unknown = Owner {
            pid_space: None,
            ..dead
        };
        assert!(!unknown.gone_from_this_host());
    }

    #[tokio::test]
    async fn the_lease_is_stamped_when_the_lock_is_taken_not_when_the_owner_was_made() {
        let dir = tempfile::tempdir().unwrap();
        let made_long_ago = Owner {
            lease_until: "2001-01-01T00:00:00Z".to_owned(),
            ..Owner::this_process("deploy", None)
        };
        let lock = LocalLock::acquire(dir.path(), "hello", made_long_ago, Duration::ZERO)
            .await
            .unwrap();
        assert!(!lock.owner().lease_expired());
        assert!(!current_owner(dir.path()).unwrap().lease_expired());
    }

    #[tokio::test]
    async fn record_left_by_a_dead_owner_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let dead = Owner {
            pid: 999_999,
            ..Owner::this_process("deploy", None)
        };
        std::fs::write(
            dir.path().join(FILE_NAME),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        let lock = LocalLock::acquire(
            dir.path(),
            "hello",
            Owner::this_process("deploy", None),
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert_eq!(lock.taken_over.as_ref().map(|o| o.pid), Some(999_999));
    }
}
