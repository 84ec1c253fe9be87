//! Login sessions and the failed-login limit of [`super::Access`].
//!
//! A session cookie is `<id>.<expiry>.<mac>`: an id unique to this process, the Unix
//! time it expires (12 hours after login) and an HMAC-SHA256 of both under a key made
//! at random when the server starts. The server verifies it without storing it, a
//! restart ends every session (the key is gone), and `logout` revokes one by its id
//! until it would have expired. It holds nothing derived from the token.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::sync::guard;

/// How long a login lasts: a working day, then the token again.
pub(super) const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Failed logins a peer may make within [`FAILURE_WINDOW`]; the next gets 429.
pub(super) const MAX_FAILURES: usize = 5;
/// The window [`MAX_FAILURES`] counts over.
pub(super) const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Peers whose failures are remembered at most: a flood from many addresses must not
/// grow the table without bound (past it the oldest peer is forgotten).
const MAX_PEERS: usize = 4096;

/// The signing key, the revoked sessions and the recent failed logins.
pub(super) struct Sessions {
    key: [u8; 32],
    next_id: AtomicU64,
    /// Revoked session ids and when they would have expired (Unix seconds).
    revoked: Mutex<HashMap<u64, u64>>,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sessions {
    /// Sessions signed with a fresh random key.
    ///
    /// # Errors
    /// When the system's random source (`/dev/urandom`) cannot be read.
    pub(super) fn new() -> std::io::Result<Sessions> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        Ok(Sessions {
            key,
            next_id: AtomicU64::new(1),
            revoked: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn mac(&self, id: u64, expires: u64) -> Hmac<Sha256> {
        // A 32-byte key: HMAC takes any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(format!("{id}.{expires}").as_bytes());
        mac
    }

    /// A new session's cookie value, valid for [`LIFETIME`].
    pub(super) fn issue(&self) -> String {
        self.issue_until(now() + LIFETIME.as_secs())
    }

    fn issue_until(&self, expires: u64) -> String {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tag = hex::encode(self.mac(id, expires).finalize().into_bytes());
        format!("{id}.{expires}.{tag}")
    }

    /// The id and expiry of `value` when it is a session this server issued, not
    /// expired and not revoked. The MAC is compared in constant time.
    fn valid(&self, value: &str) -> Option<(u64, u64)> {
        let mut parts = value.splitn(3, '.');
        let id: u64 = parts.next()?.parse().ok()?;
        let expires: u64 = parts.next()?.parse().ok()?;
        let tag = hex::decode(parts.next()?).ok()?;
        self.mac(id, expires).verify_slice(&tag).ok()?;
        (expires > now() && !guard(&self.revoked).contains_key(&id)).then_some((id, expires))
    }

    /// Whether `value` is a live session.
    pub(super) fn verify(&self, value: &str) -> bool {
        self.valid(value).is_some()
    }

    /// Ends the session `value`, if it is one; revoked ids are kept until they would
    /// have expired anyway.
    pub(super) fn revoke(&self, value: &str) {
        if let Some((id, expires)) = self.valid(value) {
            let mut revoked = guard(&self.revoked);
            let now = now();
            revoked.retain(|_, until| *until > now);
            revoked.insert(id, expires);
        }
    }

    /// How long `peer` must wait before trying again, when it made
    /// [`MAX_FAILURES`] failed logins within the last [`FAILURE_WINDOW`].
    pub(super) fn retry_after(&self, peer: IpAddr) -> Option<Duration> {
        let mut failures = guard(&self.failures);
        let times = failures.get_mut(&peer)?;
        while times.front().is_some_and(|t| t.elapsed() >= FAILURE_WINDOW) {
            times.pop_front();
        }
        if times.is_empty() {
            failures.remove(&peer);
            return None;
        }
        (times.len() >= MAX_FAILURES)
            .then(|| {
                times
                    .front()
                    .map(|t| FAILURE_WINDOW.saturating_sub(t.elapsed()))
            })
            .flatten()
    }

    /// Counts a failed login from `peer`.
    pub(super) fn failed(&self, peer: IpAddr) {
        let mut failures = guard(&self.failures);
        if failures.len() >= MAX_PEERS && !failures.contains_key(&peer) {
            failures.retain(|_, times| times.back().is_some_and(|t| t.elapsed() < FAILURE_WINDOW));
            if failures.len() >= MAX_PEERS
                && let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(peer, _)| *peer)
            {
                failures.remove(&oldest);
            }
        }
        let times = failures.entry(peer).or_default();
        times.push_back(Instant::now());
        while times.len() > MAX_FAILURES {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the cookie was a fixed digest of the token, valid forever and the
    /// same for every login; it could not be ended without rotating the token.
    #[test]
    fn a_session_expires_can_be_revoked_and_cannot_be_forged() {
        let sessions = Sessions::new().unwrap();
        let one = sessions.issue();
        let two = sessions.issue();
        assert_ne!(one, two, "each login its own session");
        assert!(sessions.verify(&one) && sessions.verify(&two));
        // Another server's key, a changed expiry or id, a cut tag: refused.
        assert!(!Sessions::new().unwrap().verify(&one));
        let (id, rest) = one.split_once('.').unwrap();
        let (expires, tag) = rest.split_once('.').unwrap();
        let later: u64 = expires.parse::<u64>().unwrap() + 3600;
        for forged in [
            format!("{id}.{later}.{tag}"),
            format!("{}.{expires}.{tag}", id.parse::<u64>().unwrap() + 1),
            format!("{id}.{expires}.{}", &tag[2..]),
            format!("{id}.{expires}"),
            String::new(),
        ] {
            assert!(!sessions.verify(&forged), "{forged}");
        }
        let expired = sessions.issue_until(now() - 1);
        assert!(!sessions.verify(&expired), "expired");
        sessions.revoke(&one);
        assert!(!sessions.verify(&one), "revoked");
        assert!(sessions.verify(&two), "the other login goes on");
    }

    #[test]
    fn five_failed_logins_a_minute_then_wait() {
        let sessions = Sessions::new().unwrap();
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(sessions.retry_after(peer), None);
            sessions.failed(peer);
        }
        let wait = sessions.retry_after(peer).expect("limited");
        assert!(wait <= FAILURE_WINDOW && wait > FAILURE_WINDOW - Duration::from_secs(5));
        assert_eq!(sessions.retry_after(other), None, "per peer");
    }
}
