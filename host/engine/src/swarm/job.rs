//! One-off jobs on a Swarm: a release hook or `cutover exec` runs once in the
//! cluster, not once per node, as a replicated job (API 1.41, Docker 20.10) of one
//! completion that never restarts, by the digest the colour runs. Its exit code
//! comes from its task, its output from the service's logs once it has ended; the
//! service is removed afterwards.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ServiceSpecMode, ServiceSpecModeReplicatedJob, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    ListServicesOptionsBuilder, ListTasksOptionsBuilder, LogsOptionsBuilder,
};
use futures_util::StreamExt;

use super::{Swarm, SwarmError, through_election};
use crate::OneOff;
use crate::docker::{self, RegistryAuth};

/// How often a running job's task is looked at.
const POLL: Duration = Duration::from_millis(500);

impl Swarm {
    /// Runs `job` from `image` (a digest reference) as a one-completion job, waits
    /// for its task to end, passes its output to `on_line`, removes it and returns
    /// its exit code.
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when Swarm refuses the job, or its task is rejected
    /// (e.g. no node could pull the image): the task's error says why.
    pub async fn run_job(
        &self,
        job: &OneOff<'_>,
        image: &str,
        auth: Option<&RegistryAuth>,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<i64, SwarmError> {
        let name = job.container_name(&self.config.service);
        // A job of this name is what a killed runner left behind.
        self.remove_job(&name).await?;
        let mut spec = self.service_spec(job.color, image, job.deploy_id, job.secrets);
        spec.name = Some(name.clone());
        let labels = spec.labels.get_or_insert_with(HashMap::new);
        labels.remove(docker::LABEL_COLOR);
        labels.remove(super::LABEL_DIGEST);
        labels.insert(docker::LABEL_ONE_OFF.to_owned(), job.name.to_owned());
        spec.mode = Some(ServiceSpecMode {
            replicated_job: Some(ServiceSpecModeReplicatedJob {
                max_concurrent: Some(1),
                total_completions: Some(1),
            }),
            ..Default::default()
        });
        // No published port (it would clash with the colour's) and no rolling update.
        spec.endpoint_spec = None;
        spec.update_config = None;
        let docker_secrets = self.docker_secrets().await?;
        if let Some(task) = spec.task_template.as_mut() {
            task.restart_policy = Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            });
            if let Some(placement) = task.placement.as_mut() {
                placement.max_replicas = None;
            }
            if let Some(container) = task.container_spec.as_mut() {
                container.args = Some(job.argv.to_vec());
                container.secrets = Some(docker_secrets);
            }
        }
        let credentials = auth.and_then(|a| a.credentials_for(image));
        on_line(&format!(
            "one-off job {name} runs {image}, once in the swarm"
        ));
        self.docker
            .client()
            .create_service(spec, credentials)
            .await
            .map_err(|e| self.api("create job", &name, e))?;
        let ended = self.wait_job(&name).await;
        let read = self.job_output(&name, on_line).await;
        let removed = self.remove_job(&name).await;
        let code = ended?;
        read?;
        removed?;
        Ok(code)
    }

    /// Waits until the job's task has ended; returns its exit code.
    async fn wait_job(&self, name: &str) -> Result<i64, SwarmError> {
        let filters = HashMap::from([("service", vec![name])]);
        loop {
            let tasks = through_election(|| {
                self.docker.client().list_tasks(Some(
                    ListTasksOptionsBuilder::default().filters(&filters).build(),
                ))
            })
            .await
            .map_err(|e| self.api("list tasks of job", name, e))?;
            for status in tasks.into_iter().filter_map(|t| t.status) {
                let code = status.container_status.as_ref().and_then(|c| c.exit_code);
                match status.state {
                    Some(TaskState::COMPLETE | TaskState::FAILED) => return Ok(code.unwrap_or(-1)),
                    Some(TaskState::REJECTED | TaskState::ORPHANED | TaskState::SHUTDOWN) => {
                        return Err(SwarmError::Docker(
                            self.docker.api(
                                "run job",
                                name,
                                bollard::errors::Error::DockerResponseServerError {
                                    status_code: 500,
                                    message: status
                                        .err
                                        .or(status.message)
                                        .unwrap_or_else(|| "its task was rejected".to_owned()),
                                },
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The ended job's stdout and stderr, line by line.
    async fn job_output(
        &self,
        name: &str,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), SwarmError> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .build();
        let mut stream = self.docker.client().service_logs(name, Some(options));
        let mut lines = docker::Lines::new(on_line);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.api("read the output of job", name, e))?;
            lines.push(&String::from_utf8_lossy(chunk.as_ref()));
        }
        lines.finish();
        Ok(())
    }

    /// Removes the job service `name`; succeeds when it does not exist.
    async fn remove_job(&self, name: &str) -> Result<(), SwarmError> {
        match self.docker.client().delete_service(name).await {
            Ok(()) => Ok(()),
            Err(e) if crate::docker::error::status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.api("remove job", name, e)),
        }
    }

    /// Removes the jobs `deploy_id` started; returns their names.
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when the services cannot be listed or removed.
    pub async fn remove_jobs(&self, deploy_id: &str) -> Result<Vec<String>, SwarmError> {
        let labels = vec![
            format!("{}={}", docker::LABEL_SERVICE, self.config.service),
            docker::LABEL_ONE_OFF.to_owned(),
            format!("{}={deploy_id}", docker::LABEL_DEPLOY),
        ];
        let filters = HashMap::from([("label", labels)]);
        let found = through_election(|| {
            self.docker.client().list_services(Some(
                ListServicesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
        })
        .await
        .map_err(|e| self.api("list jobs of", deploy_id, e))?;
        let mut removed = Vec::new();
        for name in found.into_iter().filter_map(|s| s.spec?.name) {
            self.remove_job(&name).await?;
            removed.push(name);
        }
        Ok(removed)
    }
}
