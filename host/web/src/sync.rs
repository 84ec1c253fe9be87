//! The one way cutover-web takes a mutex: the guard even when a thread panicked
//! holding it. The state each mutex here guards stays consistent (every change is
//! one assignment or one map update), so a panic elsewhere must not take the
//! server's queue, sessions or connection table down with it.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// The guard of `m`, also when a thread panicked holding it.
pub(crate) fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
