//! [`Context`]: everything a command works with — the config and the handles to the
//! world (the container engine, the plugins the command uses, the proxy, the state
//! file and where events go) — plus the questions several commands ask of them.
//!
//! It holds handles; it does not run a deploy. The state machine is in `deploy`,
//! recovery in `recover`, the read-only views in `status` and `observe`.

use std::sync::Arc;
use std::time::Duration;

use crate::Color;
use crate::ci::CiFacts;
use crate::config::Config;
use crate::docker::{Docker, RegistryAuth};
use crate::engine::{DockerHost, Engine, PreparedImage};
use crate::error::DeployError;
use crate::events::{Level, Reporter};
use crate::git::GitFacts;
use crate::health::Prober;
use crate::lock::{DeployLock, Owner};
use crate::plugin::{PluginHost, PluginKind, Plugins, types};
use crate::proxy::Proxy;
use crate::secret::Secret;
use crate::state::{Slot, StateStore, now_rfc3339};

/// Everything a command needs: the config and the handles to the world.
pub struct Context {
    /// The deploy config.
    pub config: Config,
    /// The container engine that runs the colours.
    pub engine: Box<dyn Engine>,
    /// The policy plugins this command uses.
    pub plugins: Plugins,
    /// The proxy.
    pub proxy: Proxy,
    /// The state file.
    pub store: StateStore,
    /// Where events go.
    pub reporter: Arc<dyn Reporter>,
}

impl Context {
    /// Loads the plugins of `kinds` (only those: a broken plugin the command does not
    /// call must not block it) and connects to the engine.
    ///
    /// # Errors
    /// [`DeployError`] when a plugin cannot be loaded or rejects its config, or the
    /// engine is unreachable.
    pub async fn open(
        config: Config,
        plugin_host: &PluginHost,
        kinds: &[PluginKind],
        reporter: Arc<dyn Reporter>,
    ) -> Result<Context, DeployError> {
        if config.engine.kind == crate::config::EngineKind::Swarm {
            // The Swarm primitives exist (engine::swarm) but the deploy flow does not
            // drive them yet: refusing beats deploying to one engine as if it were
            // the cluster.
            return Err(crate::config::ConfigError::Invalid {
                path: config.file.clone(),
                key: "engine.kind".to_owned(),
                message: "`swarm` cannot deploy yet: this version has the Swarm engine's \
                          building blocks but not its deploy flow. Use kind = \"docker\" \
                          (one engine, local or remote over ssh:// or tcp:// with TLS)"
                    .to_owned(),
            }
            .into());
        }
        let plugins = Plugins::load(plugin_host, &config, kinds, reporter.clone())?;
        let engine = Box::new(DockerHost::new(
            Docker::connect(&config.engine).await?,
            config.clone(),
        ));
        let proxy = Proxy::new(&config);
        let store = StateStore::new(&config.state_dir(), &config.service);
        Ok(Context {
            config,
            engine,
            plugins,
            proxy,
            store,
            reporter,
        })
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.config.service
    }

    /// Takes the service's deploy lock for `operation`, reporting a takeover from a
    /// holder that died.
    ///
    /// # Errors
    /// [`DeployError::Lock`] when another live process holds it after `wait`.
    pub async fn lock(
        &self,
        operation: &str,
        wait: Duration,
        run_url: Option<String>,
    ) -> Result<DeployLock, DeployError> {
        self.store.ensure_dir()?;
        let owner = Owner::this_process(operation, run_url);
        let lock = DeployLock::acquire(self.store.dir(), self.service(), owner, wait).await?;
        if let Some(dead) = &lock.taken_over {
            self.reporter.log(
                Level::Warn,
                &format!(
                    "took over the deploy lock left by {} (that process is gone)",
                    dead.describe()
                ),
            );
        }
        Ok(lock)
    }

    /// What each slot really is, for the selector and for `status`.
    ///
    /// # Errors
    /// [`DeployError`] when the engine cannot be asked.
    pub async fn slot_statuses(&self) -> Result<Vec<types::SlotStatus>, DeployError> {
        let mut slots = Vec::with_capacity(2);
        for color in Color::BOTH {
            let instance = self.engine.inspect(color).await?;
            let running = instance.as_ref().is_some_and(|i| i.running);
            let last_probe = if running {
                self.probe_once(color).await
            } else {
                types::ProbeVerdict::Unknown
            };
            // One host runs one container per colour: it is "desired" while it runs.
            let copies = u32::from(running);
            slots.push(types::SlotStatus {
                color: color.into(),
                present: instance.is_some(),
                desired: copies,
                running: copies,
                image_digest: instance
                    .as_ref()
                    .map(|i| i.image_id.clone())
                    .filter(|id| id.starts_with("sha256:")),
                image: instance.map(|i| i.image),
                last_probe,
            });
        }
        Ok(slots)
    }

    /// One probe of `color`, judged by the health policy as if it were the first.
    pub async fn probe_once(&self, color: Color) -> types::ProbeVerdict {
        self.probe_judged(color).await.verdict
    }

    /// One probe of `color` and the health policy's verdict on it (unknown when no
    /// health policy is loaded), as the analysis plugin sees it.
    pub async fn probe_judged(&self, color: Color) -> types::InstanceProbe {
        let instance = self.instance(color);
        let prober = Prober::new(self.config.upstream(color), &self.config.health);
        let probe = prober.probe().await;
        let verdict = match self.plugins.health() {
            Err(_) => types::ProbeVerdict::Unknown,
            Ok(policy) => {
                let input = types::HealthInput {
                    service: self.service().to_owned(),
                    color: color.into(),
                    instance: instance.clone(),
                    attempt: 1,
                    elapsed_ms: 0,
                    probe: probe.clone(),
                    history: Vec::new(),
                };
                match policy.evaluate(&input) {
                    Ok(types::HealthVerdict::Healthy) => types::ProbeVerdict::Healthy,
                    _ => types::ProbeVerdict::Unhealthy,
                }
            }
        };
        types::InstanceProbe {
            color: color.into(),
            instance,
            probe,
            verdict,
        }
    }

    /// The gate's input from the checkout beside the config and the CI environment.
    pub fn gate_input(&self, git: &GitFacts, ci: &CiFacts) -> types::GateInput {
        crate::gate::gate_input(self.service(), git, ci)
    }

    /// The one copy of `color` a single host runs: its container, at its upstream.
    pub fn instance(&self, color: Color) -> types::Instance {
        let addr = self.config.upstream(color);
        types::Instance {
            id: self.engine.slot_name(color),
            node: None,
            address: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// The proxy-template input for sending all traffic to `target`.
    pub fn template_input(&self, target: Color, previous: Option<Color>) -> types::TemplateInput {
        self.split_input(target, previous, 100, None)
    }

    /// The proxy-template input for sending `weight` percent of traffic to `target` and
    /// the rest to `previous` (100: all to `target`), optionally keeping each client
    /// on one colour by the nginx variable `sticky_key` (e.g. `$cookie_session`).
    pub fn split_input(
        &self,
        target: Color,
        previous: Option<Color>,
        weight: u8,
        sticky_key: Option<&str>,
    ) -> types::TemplateInput {
        let upstream = |color: Color| types::Upstream {
            color: color.into(),
            servers: vec![self.instance(color)],
        };
        types::TemplateInput {
            service: self.service().to_owned(),
            target: upstream(target),
            previous: previous.map(upstream),
            target_weight: weight,
            sticky_key: sticky_key.map(str::to_owned),
            variables: self
                .config
                .proxy
                .variables
                .iter()
                .map(|(k, v)| types::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        }
    }

    /// Renders the proxy files for `target`; the plugin host has already checked
    /// them against [`crate::rendered`].
    ///
    /// # Errors
    /// [`DeployError`] when the plugin fails or its output is refused.
    pub fn render(
        &self,
        target: Color,
        previous: Option<Color>,
    ) -> Result<Vec<types::ProxyFile>, DeployError> {
        let template = self.plugins.template()?;
        Ok(template.render(&self.template_input(target, previous))?)
    }

    /// Renders the proxy files for a canary step: `weight` percent to `target`, the
    /// rest to `previous`, sticky on `sticky_key` when given.
    ///
    /// # Errors
    /// [`DeployError`] when the plugin fails, refuses, or targets 0.1.0 (which
    /// cannot render a split).
    pub fn render_split(
        &self,
        target: Color,
        previous: Color,
        weight: u8,
        sticky_key: Option<&str>,
    ) -> Result<Vec<types::ProxyFile>, DeployError> {
        let template = self.plugins.template()?;
        Ok(template.render(&self.split_input(target, Some(previous), weight, sticky_key))?)
    }

    /// The registry credentials, when a registry is configured.
    ///
    /// # Errors
    /// [`DeployError::MissingEnv`] when the password variable is not set.
    pub fn registry_auth(&self) -> Result<Option<RegistryAuth>, DeployError> {
        let Some(registry) = &self.config.image.registry else {
            return Ok(None);
        };
        let password = std::env::var(&registry.password_env)
            .ok()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| DeployError::MissingEnv {
                var: registry.password_env.clone(),
                key: "image.registry.password_env".to_owned(),
                file: self.config.file.clone(),
            })?;
        Ok(Some(RegistryAuth {
            server: registry.server.clone(),
            username: registry.username.clone(),
            password: Secret::new(password),
        }))
    }

    /// The record of `image` running in `color`'s slot for `deploy_id`, serving from
    /// now: the one place a [`Slot`] is made.
    pub fn slot(&self, color: Color, image: PreparedImage, deploy_id: &str) -> Slot {
        Slot {
            color,
            image_id: image.id,
            image_ref: image.reference,
            image_digest: image.digest,
            container: self.engine.slot_name(color),
            upstream: self.config.upstream(color).to_string(),
            deploy_id: deploy_id.to_owned(),
            since: now_rfc3339(),
        }
    }
}
