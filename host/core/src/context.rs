//! [`Context`]: everything a command works with — the config and the handles to the
//! world (the container engine, the plugins the command uses, the proxy, the state
//! file and where events go) — plus the questions several commands ask of them.
//!
//! It holds handles; it does not run a deploy or take the deploy lock. The state
//! machine is in `deploy`, recovery in `recover`, the lock in `hold`, the read-only
//! views in `status` and `observe`.

use std::sync::Arc;

use crate::Color;
use crate::ci::CiFacts;
use crate::config::Config;
use crate::config::EngineKind;
use crate::docker::{Docker, RegistryAuth};
use crate::engine::{DockerHost, Engine, PreparedImage, RecordedLive, Replica, SwarmEngine};
use crate::error::DeployError;
use crate::events::Reporter;
use crate::git::GitFacts;
use crate::health::Prober;

use crate::plugin::{PluginHost, PluginKind, Plugins, types};
use crate::proxy::Proxy;
use crate::secret::Secret;
use crate::state::{Slot, State, StateStore, now_rfc3339};

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
        let plugins = Plugins::load(plugin_host, &config, kinds, reporter.clone())?;
        let docker = Docker::connect(&config.engine).await?;
        let engine: Box<dyn Engine> = match config.engine.kind {
            EngineKind::Docker => Box::new(DockerHost::new(docker, config.clone())),
            EngineKind::Swarm => Box::new(SwarmEngine::open(docker, config.clone()).await?),
        };
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

    /// Brings `state` in line with `recorded`, the engine's record of the live colour
    /// (as `observe::engine_record` reads it): another runner, with another state file,
    /// may have deployed since. Returns what changed, for a warning.
    ///
    /// # Errors
    /// [`DeployError`] when the engine cannot be asked.
    pub async fn follow(
        &self,
        state: &mut State,
        recorded: &RecordedLive,
    ) -> Result<Option<String>, DeployError> {
        let known = state.live.as_ref().map(|s| s.color);
        if known == Some(recorded.live) {
            return Ok(None);
        }
        state.live = self.slot_from_engine(recorded.live).await?;
        state.previous = match recorded.previous {
            Some(color) => self.slot_from_engine(color).await?,
            None => None,
        };
        Ok(Some(format!(
            "the cluster records {} live{}, but this runner's state file said {}: another runner deployed since; following the cluster",
            recorded.live,
            recorded
                .previous
                .map_or_else(String::new, |p| format!(" ({p} before it)")),
            known.map_or_else(|| "nothing".to_owned(), |c| c.to_string()),
        )))
    }

    /// The record of what the engine runs in `color`'s slot, for a colour this
    /// runner did not deploy.
    async fn slot_from_engine(&self, color: Color) -> Result<Option<Slot>, DeployError> {
        Ok(self.engine.inspect(color).await?.map(|i| {
            let image = PreparedImage {
                digest: Some(i.image.clone()).filter(|r| r.contains("@sha256:")),
                id: i.image_id,
                reference: i.image,
            };
            self.slot(color, image, &i.deploy_id.unwrap_or_default())
        }))
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
            slots.push(types::SlotStatus {
                color: color.into(),
                present: instance.is_some(),
                desired: instance.as_ref().map_or(0, |i| i.desired),
                running: instance.as_ref().map_or(0, |i| i.running_copies),
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

    /// One probe of `color` (its first running copy) and the health policy's verdict
    /// on it (unknown when no health policy is loaded), as the analysis plugin sees it.
    pub async fn probe_judged(&self, color: Color) -> types::InstanceProbe {
        let replica = match self.engine.replicas(color).await {
            Ok(replicas) => replicas.into_iter().next(),
            Err(_) => None,
        }
        .unwrap_or_else(|| self.configured_replica(color));
        let instance = instance_of(&replica);
        let prober = Prober::new(replica.addr, &self.config.health);
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

    /// `color` at the address the config gives it: the one container of a single
    /// host (for a Swarm, where copies are tasks on nodes, only a placeholder for
    /// previews such as the file names a template writes).
    pub fn configured_instance(&self, color: Color) -> types::Instance {
        instance_of(&self.configured_replica(color))
    }

    fn configured_replica(&self, color: Color) -> Replica {
        Replica {
            id: self.engine.slot_name(color),
            node: None,
            addr: self.config.upstream(color),
        }
    }

    /// The running copies of `color` as the plugins see them; the configured
    /// address when none runs (a plan's preview of a colour not started yet).
    ///
    /// # Errors
    /// [`DeployError`] when the engine cannot be asked.
    pub async fn servers(&self, color: Color) -> Result<Vec<types::Instance>, DeployError> {
        let replicas = self.engine.replicas(color).await?;
        if replicas.is_empty() {
            return Ok(vec![self.configured_instance(color)]);
        }
        Ok(replicas.iter().map(instance_of).collect())
    }

    /// `color`'s upstream for the template: `servers`.
    pub fn upstream(color: Color, servers: Vec<types::Instance>) -> types::Upstream {
        types::Upstream {
            color: color.into(),
            servers,
        }
    }

    /// The proxy-template input for sending `weight` percent of traffic to `target` and
    /// the rest to `previous` (100: all to `target`), optionally keeping each client
    /// on one colour by the nginx variable `sticky_key` (e.g. `$cookie_session`).
    pub fn template_input(
        &self,
        target: types::Upstream,
        previous: Option<types::Upstream>,
        weight: u8,
        sticky_key: Option<&str>,
    ) -> types::TemplateInput {
        types::TemplateInput {
            service: self.service().to_owned(),
            target,
            previous,
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

    /// Renders the proxy files for `target` at the configured addresses, without
    /// asking the engine: enough to learn which files the template writes.
    ///
    /// # Errors
    /// [`DeployError`] when the plugin fails or its output is refused.
    pub fn render_configured(&self, target: Color) -> Result<Vec<types::ProxyFile>, DeployError> {
        let target = Self::upstream(target, vec![self.configured_instance(target)]);
        let template = self.plugins.template()?;
        Ok(template.render(&self.template_input(target, None, 100, None))?)
    }

    /// Renders the proxy files sending `weight` percent of traffic to `target_servers`
    /// (copies of `target`) and the rest to `previous`'s running copies, sticky on
    /// `sticky_key` when given.
    ///
    /// # Errors
    /// [`DeployError`] when the engine cannot be asked, the plugin fails, refuses,
    /// or targets 0.1.0 and is asked for what only 0.2.0 renders (a split, several
    /// servers).
    pub async fn render_to(
        &self,
        target_servers: Vec<types::Instance>,
        target: Color,
        previous: Option<Color>,
        weight: u8,
        sticky_key: Option<&str>,
    ) -> Result<Vec<types::ProxyFile>, DeployError> {
        let previous = match previous {
            Some(color) => Some(Self::upstream(color, self.servers(color).await?)),
            None => None,
        };
        let target = Self::upstream(target, target_servers);
        let template = self.plugins.template()?;
        Ok(template.render(&self.template_input(target, previous, weight, sticky_key))?)
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
            upstream: self.config.upstreams(color).to_string(),
            deploy_id: deploy_id.to_owned(),
            since: now_rfc3339(),
        }
    }
}

/// A running copy as the plugins see it.
pub fn instance_of(replica: &Replica) -> types::Instance {
    types::Instance {
        id: replica.id.clone(),
        node: replica.node.clone(),
        address: replica.addr.ip().to_string(),
        port: replica.addr.port(),
    }
}
