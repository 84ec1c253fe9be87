//! Replay memory: the delivery ids and body digests already accepted, so a delivery
//! seen before does nothing, also after a restart. It owns the file in the state
//! directory and never decides anything else about a request.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// How many delivery ids and body digests are remembered.
const MAX_REMEMBERED: usize = 10_000;

/// The key a delivery id is remembered under.
pub(super) fn delivery_key(delivery: &str) -> String {
    format!("d {delivery}")
}

/// The key a body is remembered under: its SHA-256.
pub(super) fn body_key(body: &[u8]) -> String {
    format!("b {}", hex::encode(Sha256::digest(body)))
}

/// Delivery ids and body digests already accepted, in memory and in an append-only
/// file (compacted when it doubles) so a replay after a restart is still refused.
/// Digests matter because the delivery header is not covered by the signature: a
/// captured body replayed under a new delivery id is still the same body.
pub(super) struct Seen {
    keys: HashSet<String>,
    order: VecDeque<String>,
    file: PathBuf,
    lines_in_file: usize,
}

impl Seen {
    /// The remembered keys in `file` (none when it does not exist yet).
    pub(super) fn load(file: PathBuf) -> Result<Seen, std::io::Error> {
        let mut seen = Seen {
            keys: HashSet::new(),
            order: VecDeque::new(),
            file,
            lines_in_file: 0,
        };
        match std::fs::read_to_string(&seen.file) {
            Ok(text) => {
                for key in text.lines().filter(|l| !l.is_empty()) {
                    seen.lines_in_file += 1;
                    seen.remember(key.to_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(seen)
    }

    fn remember(&mut self, key: String) -> bool {
        if !self.keys.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > MAX_REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
        true
    }

    /// Records `keys`; false (recording nothing) when any was seen before.
    pub(super) fn accept(&mut self, keys: &[String]) -> bool {
        if keys.iter().any(|k| self.keys.contains(k)) {
            return false;
        }
        for key in keys {
            self.remember(key.clone());
        }
        if let Err(e) = self.persist(keys) {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot record delivery ids; a replay after a restart would not be recognised");
        }
        true
    }

    /// Forgets `keys` (a push dropped before it ran may be delivered again).
    pub(super) fn forget(&mut self, keys: &[String]) {
        for key in keys {
            self.keys.remove(key);
        }
        self.order.retain(|k| !keys.contains(k));
        if let Err(e) = self.rewrite() {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot rewrite the delivery ids");
        }
    }

    fn persist(&mut self, keys: &[String]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if self.lines_in_file + keys.len() > 2 * MAX_REMEMBERED {
            return self.rewrite();
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.file)?;
        let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        file.write_all(text.as_bytes())?;
        self.lines_in_file += keys.len();
        Ok(())
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        let text: String = self.order.iter().map(|k| format!("{k}\n")).collect();
        crate::atomic_file::write(&self.file, text.as_bytes(), 0o600)
            .map_err(std::io::Error::other)?;
        self.lines_in_file = self.order.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_reload_and_forgotten_ones_are_accepted_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deliveries");
        let keys = |d: &str, b: &str| [format!("d {d}"), format!("b {b}")];
        let mut seen = Seen::load(file.clone()).unwrap();
        assert!(seen.accept(&keys("a", "1")));
        assert!(!seen.accept(&keys("a", "2")), "same delivery");
        assert!(!seen.accept(&keys("c", "1")), "same body, new delivery id");
        let mut again = Seen::load(file.clone()).unwrap();
        assert!(!again.accept(&keys("a", "3")));
        assert!(again.accept(&keys("b", "4")));
        again.forget(&["d b".to_owned()]);
        let mut third = Seen::load(file).unwrap();
        assert!(
            third.accept(&keys("b", "5")),
            "a forgotten delivery is accepted again"
        );
    }

    #[test]
    fn seen_file_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deliveries");
        let mut seen = Seen::load(file.clone()).unwrap();
        for i in 0..(MAX_REMEMBERED + 10) {
            assert!(seen.accept(&[format!("d {i}")]));
        }
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert!(lines <= 2 * MAX_REMEMBERED, "{lines}");
        let seen = Seen::load(file).unwrap();
        assert_eq!(seen.order.len(), MAX_REMEMBERED);
        assert!(!seen.keys.contains("d 0"), "the oldest are forgotten");
    }
}
