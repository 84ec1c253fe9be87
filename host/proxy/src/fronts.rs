//! Every nginx in front of the service, switched as one: `[proxy]` first, then each
//! `[[proxy.extra]]` in config order. Each step runs on all of them; a config test
//! that fails on one puts every front end's files back, and the callers restore and
//! reload all of them after a failed switch or verification. The journal keeps each
//! front end's files apart ([`SavedFile::front`]), so recovery restores every one.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{DrainReport, Nginx, ProxyError, Reload, files};
use crate::SavedFile;
use crate::config::Config;
use crate::plugin::types::ProxyFile;

/// What `[proxy]`'s front end is called in messages.
pub(super) const PRIMARY: &str = "proxy";

/// The proxy in front of the service, as the config describes it.
#[derive(Debug, Clone)]
pub struct Proxy {
    primary: Nginx,
    /// `[[proxy.extra]]`, by name.
    extra: Vec<(String, Nginx)>,
}

impl Proxy {
    /// The front ends described by `config`. Touches nothing until a method runs.
    pub fn new(config: &Config) -> Proxy {
        Proxy {
            primary: Nginx::new(config),
            extra: config
                .proxy
                .extra
                .iter()
                .map(|f| (f.name.clone(), Nginx::extra(config, f)))
                .collect(),
        }
    }

    /// Every front end with its journal tag (none for `[proxy]`).
    fn all(&self) -> impl Iterator<Item = (Option<&str>, &Nginx)> {
        std::iter::once((None, &self.primary))
            .chain(self.extra.iter().map(|(n, f)| (Some(n.as_str()), f)))
    }

    /// The journal tags of every front end, `[proxy]`'s (none) first.
    pub fn front_tags(&self) -> Vec<Option<String>> {
        self.all().map(|(tag, _)| tag.map(str::to_owned)).collect()
    }

    /// The directory `[proxy]`'s rendered files are written to.
    pub fn config_dir(&self) -> &Path {
        self.primary.config_dir()
    }

    /// The managed nginx's generated `nginx.conf` (none in external mode).
    pub fn managed_conf(&self) -> Option<&Path> {
        self.primary.managed_conf()
    }

    /// The managed nginx's error log (none in external mode).
    pub fn error_log(&self) -> Option<&Path> {
        self.primary.error_log()
    }

    /// The JSON access log a canary reads (`[proxy]`'s: a canary drives one front end).
    pub fn access_log(&self) -> std::path::PathBuf {
        self.primary.access_log()
    }

    /// The pid file of `[proxy]`'s nginx.
    pub fn pid_file(&self) -> Option<&Path> {
        self.primary.pid_file()
    }

    /// Whether `[proxy]`'s nginx runs (see [`Nginx::is_running`]).
    pub fn is_running(&self) -> bool {
        self.primary.is_running()
    }

    /// Whether `cutover pause` paused the service (`[proxy]`'s nginx has its file).
    pub fn is_paused(&self) -> bool {
        self.primary.is_paused()
    }

    /// Pauses the service on every front end: writes `file` (see [`crate::pause`]),
    /// tests and reloads; a failing test puts every front end's files back.
    ///
    /// # Errors
    /// As [`Proxy::write_and_test`] and [`Proxy::switch`].
    pub async fn pause(&self, file: ProxyFile) -> Result<Reload, ProxyError> {
        self.write_and_test(std::slice::from_ref(&file), &[])
            .await?;
        self.switch().await
    }

    /// Resumes the service: removes the pause file `path` from every front end,
    /// tests and reloads. A failing test puts the file back, so the service stays
    /// paused rather than half resumed.
    ///
    /// # Errors
    /// As [`Proxy::test`] and [`Proxy::switch`]; writing errors.
    pub async fn resume(&self, path: &str) -> Result<Reload, ProxyError> {
        let paths = [path.to_owned()];
        let saved = self.snapshot_all(&paths)?;
        let removed: Vec<SavedFile> = saved
            .iter()
            .map(|f| SavedFile {
                contents: None,
                ..f.clone()
            })
            .collect();
        self.write_saved(&removed)?;
        if let Err(e) = self.test().await {
            self.write_saved(&saved)?;
            return Err(e);
        }
        self.switch().await
    }

    /// Stops the managed nginx; never an external one.
    ///
    /// # Errors
    /// [`ProxyError::Stop`].
    pub async fn stop(&self) -> Result<(), ProxyError> {
        self.primary.stop().await
    }

    /// A diff from `current` to `next`, for `cutover plan`.
    pub fn diff(&self, current: &[SavedFile], next: &[ProxyFile]) -> String {
        self.primary.diff(current, next)
    }

    /// The current contents of `paths` in `[proxy]`'s config directory (what `plan`
    /// and `status` show: every front end gets the same rendered files).
    ///
    /// # Errors
    /// See [`Nginx::snapshot`].
    pub fn snapshot(&self, paths: &[String]) -> Result<Vec<SavedFile>, ProxyError> {
        self.primary.snapshot(paths)
    }

    /// The current contents of `paths` in every front end's directory, each tagged
    /// with its front end, to be kept for a restore.
    ///
    /// # Errors
    /// See [`Nginx::snapshot`], naming the front end.
    pub fn snapshot_all(&self, paths: &[String]) -> Result<Vec<SavedFile>, ProxyError> {
        let mut saved = Vec::new();
        for (tag, front) in self.all() {
            let files = front
                .snapshot(paths)
                .map_err(|e| self.named(tag, front, e))?;
            saved.extend(files.into_iter().map(|f| SavedFile {
                front: tag.map(str::to_owned),
                ..f
            }));
        }
        Ok(saved)
    }

    /// Checks that every front end's programs exist (see [`Nginx::preflight`]).
    ///
    /// # Errors
    /// The first missing program, naming its front end.
    pub fn preflight(&self) -> Result<(), ProxyError> {
        self.each(|front| front.preflight())
    }

    /// Writes `files` to every front end and runs each one's config test, in order.
    /// When writing or testing fails on one, that one's files are put back (see
    /// [`Nginx::write_and_test`]) and so are those of every front end already
    /// written, even when one of those fails; none is reloaded.
    ///
    /// # Errors
    /// The failure, naming its front end; [`ProxyError::Restore`] when putting an
    /// earlier front end's files back failed too, with every such failure.
    pub async fn write_and_test(
        &self,
        files: &[ProxyFile],
        previous: &[SavedFile],
    ) -> Result<(), ProxyError> {
        let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        let mut written: Vec<(Option<&str>, &Nginx, Vec<SavedFile>)> = Vec::new();
        for (tag, front) in self.all() {
            let mut saved = of_front(previous, tag);
            let missing: Vec<String> = paths
                .iter()
                .filter(|p| saved.iter().all(|s| &s.path != *p))
                .cloned()
                .collect();
            let outcome = match front.snapshot(&missing) {
                Ok(now) => {
                    saved.extend(now);
                    front.write_and_test(files, &saved).await
                }
                Err(e) => Err(e),
            };
            if let Err(error) = outcome {
                let error = self.named(tag, front, error);
                // Every front end already written gets its files back, even after
                // one of them failed to: stopping there would leave the rest on
                // files nobody tested together.
                let mut undone = Vec::new();
                for (done_tag, done, saved) in &written {
                    if let Err(undo) = files::restore_all(done.config_dir(), saved) {
                        undone.push((done.config_dir(), self.named(*done_tag, done, undo)));
                    }
                }
                let Some(dir) = undone.first().map(|(dir, _)| dir.to_path_buf()) else {
                    return Err(error);
                };
                let failures = undone.into_iter().map(|(_, e)| e).collect();
                return Err(ProxyError::Restore {
                    cause: error.to_string(),
                    dir,
                    error: Box::new(one_or_several(failures)),
                });
            }
            written.push((tag, front, saved));
        }
        Ok(())
    }

    /// Runs every front end's config test on what is on disk now.
    ///
    /// # Errors
    /// The first failure, naming its front end.
    pub async fn test(&self) -> Result<(), ProxyError> {
        for (tag, front) in self.all() {
            front.test().await.map_err(|e| self.named(tag, front, e))?;
        }
        Ok(())
    }

    /// Makes every front end serve what is on disk, in order (see [`Nginx::switch`]).
    /// A failure stops there: the caller restores every front end.
    ///
    /// # Errors
    /// The failure, naming its front end.
    pub async fn switch(&self) -> Result<Reload, ProxyError> {
        let mut reload = self
            .primary
            .switch()
            .await
            .map_err(|e| self.named(None, &self.primary, e))?;
        for (name, front) in &self.extra {
            let done = front
                .switch()
                .await
                .map_err(|e| self.named(Some(name), front, e))?;
            reload.extra.push(done);
        }
        Ok(reload)
    }

    /// Puts every front end's `previous` files back, tests and reloads each (see
    /// [`Nginx::restore`]). Every front end is restored even when one fails.
    ///
    /// # Errors
    /// The failure, naming its front end; [`ProxyError::Several`] with each one when
    /// several front ends failed.
    pub async fn restore(&self, previous: &[SavedFile]) -> Result<(), ProxyError> {
        let mut failures = Vec::new();
        for (tag, front) in self.all() {
            if let Err(e) = front.restore(&of_front(previous, tag)).await {
                failures.push(self.named(tag, front, e));
            }
        }
        every_one(failures)
    }

    /// Writes each front end's `saved` files back as they are, without a test or a
    /// reload (see [`Nginx::write_saved`]). Every front end is written even when one
    /// fails.
    ///
    /// # Errors
    /// The failure, naming its front end; [`ProxyError::Several`] with each one when
    /// several front ends failed.
    pub fn write_saved(&self, saved: &[SavedFile]) -> Result<(), ProxyError> {
        let failures = self
            .all()
            .filter_map(|(tag, front)| {
                front
                    .write_saved(&of_front(saved, tag))
                    .err()
                    .map(|e| self.named(tag, front, e))
            })
            .collect();
        every_one(failures)
    }

    /// Waits until every front end's old workers have finished, at most `max` in all.
    pub async fn drain(&self, reload: &Reload, max: Duration) -> DrainReport {
        let start = Instant::now();
        let deadline = start + max;
        let mut report = self.primary.drain(reload, max).await;
        for ((_, front), extra) in self.extra.iter().zip(&reload.extra) {
            let left = deadline.saturating_duration_since(Instant::now());
            let more = front.drain(extra, left).await;
            report.waited = start.elapsed();
            report.old_workers += more.old_workers;
            report.remaining += more.remaining;
            report.long_lived += more.long_lived;
            report.watched &= more.watched;
        }
        report
    }

    /// `error` as it happened on the front end `tag`. With one front end, errors read
    /// as they always did.
    fn named(&self, tag: Option<&str>, front: &Nginx, error: ProxyError) -> ProxyError {
        if self.extra.is_empty() {
            return error;
        }
        ProxyError::Front {
            name: tag.unwrap_or(PRIMARY).to_owned(),
            dir: front.config_dir().to_owned(),
            error: Box::new(error),
        }
    }

    fn each(&self, step: impl Fn(&Nginx) -> Result<(), ProxyError>) -> Result<(), ProxyError> {
        for (tag, front) in self.all() {
            step(front).map_err(|e| self.named(tag, front, e))?;
        }
        Ok(())
    }
}

/// Ok when nothing failed, else every failure (see [`one_or_several`]).
fn every_one(failures: Vec<ProxyError>) -> Result<(), ProxyError> {
    if failures.is_empty() {
        Ok(())
    } else {
        Err(one_or_several(failures))
    }
}

/// One failure as it is, several as [`ProxyError::Several`]. `failures` is not empty.
fn one_or_several(mut failures: Vec<ProxyError>) -> ProxyError {
    if failures.len() == 1 {
        failures.remove(0)
    } else {
        ProxyError::Several(failures)
    }
}

/// The files of `saved` that belong to the front end tagged `tag`.
fn of_front(saved: &[SavedFile], tag: Option<&str>) -> Vec<SavedFile> {
    saved
        .iter()
        .filter(|s| s.front.as_deref() == tag)
        .map(|s| SavedFile {
            front: None,
            ..s.clone()
        })
        .collect()
}
