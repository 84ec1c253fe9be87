//! [`DockerHost`]: the engine of one Docker host, where each colour is one container
//! named `<service>-<colour>` with its own host port.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use async_trait::async_trait;

use super::{
    Engine, EngineError, ImageSource, Instance, OnBytes, OnLine, OneOff, PreparedImage, Replica,
};
use crate::Color;
use crate::config::Config;
use crate::docker::{self, ContainerSpec, Docker, RegistryAuth};
use crate::secret::Secret;

/// One Docker engine running both colours of a service as containers.
pub struct DockerHost {
    docker: Docker,
    config: Config,
}

impl DockerHost {
    /// The engine for `config`'s service on `docker`.
    pub fn new(docker: Docker, config: Config) -> DockerHost {
        DockerHost { docker, config }
    }

    fn service(&self) -> &str {
        &self.config.service
    }

    /// The container `color` runs as: the config's container settings, this slot's
    /// port and address, and the labels and environment that name the deploy.
    fn container_spec(
        &self,
        color: Color,
        image_id: &str,
        deploy_id: &str,
        secrets: &[(String, Secret)],
    ) -> ContainerSpec {
        let config = &self.config;
        let slot = config.color(color);
        let mut labels = config.container.labels.clone();
        labels.extend(docker::service_labels(
            &config.service,
            Some(color),
            deploy_id,
        ));
        let mut env: Vec<(String, String)> = config
            .container
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("CUTOVER_SERVICE".to_owned(), config.service.clone()));
        env.push(("CUTOVER_COLOR".to_owned(), color.to_string()));
        env.push(("CUTOVER_DEPLOY_ID".to_owned(), deploy_id.to_owned()));
        ContainerSpec {
            name: self.slot_name(color),
            image: image_id.to_owned(),
            labels,
            env,
            secret_env: secrets.to_vec(),
            binds: config.container.volumes.clone(),
            port: config.container.port,
            publish: slot
                .host_port
                .map(|port| SocketAddr::new(slot.host_ip, port)),
            network: config.container.network.as_ref().map(|n| n.name.clone()),
            ip: slot.ip,
            command: config.container.command.clone(),
            stop_grace: config.container.stop_grace.get(),
        }
    }

    /// The container a one-off job runs as: a copy of its colour's, minus what would
    /// clash with the colour itself (its name, its host port, its fixed address).
    async fn one_off_spec(&self, job: &OneOff<'_>) -> Result<ContainerSpec, EngineError> {
        if let Some(network) = &self.config.container.network {
            self.docker.ensure_network(network, self.service()).await?;
        }
        let mut spec = self.container_spec(job.color, &job.image.id, job.deploy_id, job.secrets);
        spec.name = job.container_name(self.service());
        spec.labels.remove(docker::LABEL_COLOR);
        spec.labels
            .insert(docker::LABEL_ONE_OFF.to_owned(), job.name.to_owned());
        spec.publish = None;
        spec.ip = None;
        spec.command = Some(job.argv.to_vec());
        Ok(spec)
    }

    /// Builds or pulls the image on this engine (pushing a build when `auth` is
    /// given); the Swarm engine builds on its manager through this too.
    pub(super) async fn prepare(
        &self,
        source: &ImageSource,
        auth: Option<&RegistryAuth>,
        on_line: &mut OnLine<'_>,
    ) -> Result<PreparedImage, docker::DockerError> {
        match source {
            ImageSource::Pull { reference } => {
                // Only the registry the reference names gets the credentials.
                let auth = auth.filter(|a| a.applies_to(reference));
                let info = match (self.docker.inspect_image(reference).await?, auth) {
                    (Some(info), None) => info,
                    _ => self.docker.pull_image(reference, auth).await?,
                };
                Ok(PreparedImage {
                    id: info.id,
                    reference: reference.clone(),
                    digest: info.digests.first().cloned(),
                })
            }
            ImageSource::Build {
                context,
                dockerfile,
                args,
                reference,
            } => {
                // Only the service label: the legacy builder turns each label into a
                // build step, and a per-deploy label would defeat its cache.
                let labels =
                    BTreeMap::from([(docker::LABEL_SERVICE.to_owned(), self.service().to_owned())]);
                let info = self
                    .docker
                    .build_image(
                        &docker::BuildRequest {
                            context,
                            dockerfile,
                            args,
                            tag: reference,
                            labels: &labels,
                        },
                        on_line,
                    )
                    .await?;
                let digest = match auth {
                    Some(auth) => self.docker.push_image(reference, auth).await?,
                    None => None,
                };
                Ok(PreparedImage {
                    id: info.id,
                    reference: reference.clone(),
                    digest,
                })
            }
        }
    }
}

#[async_trait]
impl Engine for DockerHost {
    fn describe(&self) -> String {
        self.docker.host().to_owned()
    }

    fn slot_name(&self, color: Color) -> String {
        docker::container_name(self.service(), color)
    }

    async fn inspect(&self, color: Color) -> Result<Option<Instance>, EngineError> {
        let info = self
            .docker
            .inspect_container(&self.slot_name(color))
            .await?;
        Ok(info.map(|c| Instance {
            deploy_id: c.labels.get(docker::LABEL_DEPLOY).cloned(),
            // One container: asked to run while it runs (a stopped one stays stopped).
            desired: u32::from(c.running),
            running_copies: u32::from(c.running),
            name: c.name,
            running: c.running,
            status: c.status,
            image: c.image,
            image_id: c.image_id,
        }))
    }

    async fn replicas(&self, color: Color) -> Result<Vec<Replica>, EngineError> {
        // The one container, at the address the config gives its colour, while it runs.
        let running = self.inspect(color).await?.is_some_and(|i| i.running);
        Ok(running
            .then(|| Replica {
                id: self.slot_name(color),
                node: None,
                addr: self.config.upstream(color),
            })
            .into_iter()
            .collect())
    }

    async fn prepare_image(
        &self,
        source: &ImageSource,
        auth: Option<&RegistryAuth>,
        on_line: &mut OnLine<'_>,
    ) -> Result<PreparedImage, EngineError> {
        Ok(self.prepare(source, auth, on_line).await?)
    }

    async fn clear(&self, color: Color) -> Result<(), EngineError> {
        Ok(self.docker.remove_container(&self.slot_name(color)).await?)
    }

    async fn start(
        &self,
        color: Color,
        image: &PreparedImage,
        deploy_id: &str,
        _auth: Option<&RegistryAuth>,
        secrets: &[(String, Secret)],
    ) -> Result<String, EngineError> {
        // The image is on this engine already (built, or pulled by `prepare_image`).
        if let Some(network) = &self.config.container.network {
            self.docker.ensure_network(network, self.service()).await?;
        }
        let spec = self.container_spec(color, &image.id, deploy_id, secrets);
        Ok(self.docker.run_container(&spec).await?)
    }

    async fn resume(&self, color: Color) -> Result<(), EngineError> {
        Ok(self.docker.start_container(&self.slot_name(color)).await?)
    }

    async fn stop(&self, color: Color) -> Result<(), EngineError> {
        Ok(self
            .docker
            .stop_container(
                &self.slot_name(color),
                self.config.container.stop_grace.get(),
            )
            .await?)
    }

    async fn logs(&self, color: Color, lines: usize) -> Result<String, EngineError> {
        Ok(self
            .docker
            .container_logs(&self.slot_name(color), lines)
            .await?)
    }

    async fn service_images(&self) -> Result<Vec<String>, EngineError> {
        Ok(self
            .docker
            .list_service_images(self.service())
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect())
    }

    async fn remove_image(&self, id: &str) -> Result<(), EngineError> {
        Ok(self.docker.remove_image(id).await?)
    }

    async fn remove_extras(&self) -> Result<(), EngineError> {
        if let Some(network) = &self.config.container.network {
            self.docker.remove_network(&network.name).await?;
        }
        Ok(())
    }

    async fn run_one_off(
        &self,
        job: &OneOff<'_>,
        on_line: &mut OnLine<'_>,
    ) -> Result<i64, EngineError> {
        let spec = self.one_off_spec(job).await?;
        Ok(self.docker.run_to_end(&spec, job.timeout, on_line).await?)
    }

    async fn run_attached(
        &self,
        job: &OneOff<'_>,
        size: Option<(u16, u16)>,
        input: tokio::sync::mpsc::Receiver<Vec<u8>>,
        output: &mut OnBytes<'_>,
    ) -> Result<i64, EngineError> {
        let spec = self.one_off_spec(job).await?;
        Ok(self
            .docker
            .run_attached(&spec, size, job.timeout, input, output)
            .await?)
    }

    async fn remove_one_offs(&self, deploy_id: &str) -> Result<Vec<String>, EngineError> {
        Ok(self
            .docker
            .remove_labelled(self.service(), docker::LABEL_ONE_OFF, Some(deploy_id))
            .await?)
    }
}
