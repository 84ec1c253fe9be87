//! The deploy lock as a command holds it ([`Hold`]): one deploy, rollback, recovery
//! or `down` of a service at a time, on this machine (`lock`'s file lock) and, on an
//! engine shared by runners on several machines, in the cluster too. Only commands
//! that change things take it; the read-only views never import this module
//! (`tests/shape.rs`).

use std::time::Duration;

use crate::context::Context;
use crate::engine::EngineHold;
use crate::error::DeployError;
use crate::events::{Level, Reporter};
use crate::lock::{LocalLock, Owner};

/// The service's deploy lock as a command holds it: this machine's, and the
/// engine's when runners on several machines share it. See [`take`].
#[derive(Debug)]
pub struct Hold {
    local: LocalLock,
    engine: Option<EngineHold>,
}

impl Hold {
    /// Who holds it.
    pub fn owner(&self) -> &Owner {
        self.local.owner()
    }

    /// Whether it is still this runner's: a cluster lock whose renewal found it
    /// taken over is not.
    ///
    /// # Errors
    /// [`DeployError::Swarm`] (lock lost) naming who holds it now.
    pub fn check(&self) -> Result<(), DeployError> {
        match &self.engine {
            Some(engine) => Ok(engine.check()?),
            None => Ok(()),
        }
    }

    /// Releases it, waiting until the engine's lock is written free (dropping it
    /// releases too, but only as long as the process lives on).
    ///
    /// # Errors
    /// [`DeployError`] when the engine's lock could not be released (it was lost,
    /// or the engine did not answer: then its lease runs out by itself). This
    /// machine's lock is released either way.
    pub async fn release(self) -> Result<(), DeployError> {
        let released = match self.engine {
            Some(engine) => engine.release().await.map_err(DeployError::from),
            None => Ok(()),
        };
        drop(self.local);
        released
    }

    /// [`Hold::release`], reporting a failure as a warning: for a command whose own
    /// work is done and recorded.
    pub async fn release_or_warn(self, reporter: &dyn Reporter) {
        if let Err(e) = self.release().await {
            reporter.log(
                Level::Warn,
                &format!("could not release the deploy lock: {e}"),
            );
        }
    }
}

/// Takes the service's deploy lock for `operation` (this machine's, then the
/// engine's when runners on several machines share it), reporting a takeover from
/// a holder that died.
///
/// # Errors
/// [`DeployError::Lock`] when another live process holds it after `wait`;
/// [`DeployError::Swarm`] naming the other runner that holds it in the cluster.
pub async fn take(
    ctx: &Context,
    operation: &str,
    wait: Duration,
    run_url: Option<String>,
) -> Result<Hold, DeployError> {
    ctx.store.ensure_dir()?;
    let owner = Owner::this_process(operation, run_url);
    let lock = LocalLock::acquire(ctx.store.dir(), ctx.service(), owner, wait).await?;
    let engine = ctx.engine.take_lock(lock.owner(), wait).await?;
    if let Some(dead) = &lock.taken_over {
        ctx.reporter.log(
            Level::Warn,
            &format!(
                "took over the deploy lock left by {} (that process is gone)",
                dead.describe()
            ),
        );
    }
    Ok(Hold {
        local: lock,
        engine,
    })
}
