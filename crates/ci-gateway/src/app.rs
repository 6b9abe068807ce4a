//! Start-up: build everything from [`Settings`], bind, serve until told to stop.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, bail};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::{ProviderSettings, Settings, TlsSettings};
use crate::domain::TenantId;
use crate::http::{AppState, router};
use crate::provider::CiProvider;
use crate::provider::concourse::ConcourseProvider;
use crate::runs::{Providers, RunService};
use crate::store::{self, JobRecord, Store};

/// How long in-flight requests may take to finish once a shutdown starts.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A built gateway, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Set when the gateway terminates TLS itself.
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Builds the rustls server configuration from `[server.tls]`: the server's chain and key,
/// and, with `client_ca_file`, a verifier of client certificates signed by that CA (optional
/// unless `require_client_cert`; a caller without one must then present a bearer token).
///
/// # Errors
/// Unreadable or invalid PEM files.
pub fn tls_config(tls: &TlsSettings) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // Guard against two providers being compiled in: rustls would then refuse to choose.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .with_context(|| format!("cannot read {}", tls.cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid certificate in {}", tls.cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .with_context(|| format!("cannot read the key in {}", tls.key_file.display()))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &tls.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read {}", ca.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("invalid certificate in {}", ca.display()))?)
                    .context("unusable client CA certificate")?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = if tls.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .context("cannot build the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the server certificate and key do not fit")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The process-wide Prometheus recorder (a recorder can be installed once per process; tests
/// build many applications in one).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then /metrics is just empty.
            let _ = metrics::set_global_recorder(recorder);
            // Register the counters up front, so /metrics lists them from the start.
            for name in [
                "ci_gateway_runs_triggered_total",
                "ci_gateway_event_streams_total",
            ] {
                metrics::counter!(name).increment(0);
            }
            handle
        })
        .clone()
}

/// Builds every provider of the allowlist and checks that each one accepts our credentials.
///
/// # Errors
/// A missing secret, or a provider that refuses to log us in: the gateway must not start half
/// able to run jobs.
pub async fn build_providers(settings: &Settings, check: bool) -> anyhow::Result<Providers> {
    let mut providers: Providers = HashMap::new();
    for (name, provider) in &settings.providers {
        let built: Arc<dyn CiProvider> = match provider {
            ProviderSettings::Concourse(c) => Arc::new(
                ConcourseProvider::new(c.resolve(name)?)
                    .with_context(|| format!("provider {name}"))?,
            ),
        };
        if check {
            built
                .check()
                .await
                .with_context(|| format!("provider {name}: start-up check failed"))?;
        }
        providers.insert(name.clone(), built);
    }
    Ok(providers)
}

/// Turns the configured catalog into job records, with each binding checked by its provider.
///
/// # Errors
/// A job whose provider is missing or whose binding the provider refuses.
pub fn catalog(settings: &Settings, providers: &Providers) -> anyhow::Result<Vec<JobRecord>> {
    let tenant = TenantId::default_tenant();
    settings
        .jobs
        .iter()
        .map(|job| {
            let Some(provider) = providers.get(&job.provider) else {
                bail!(
                    "job {}: provider {:?} is not in the allowlist",
                    job.job_id,
                    job.provider
                );
            };
            let binding = serde_json::to_value(&job.binding)
                .with_context(|| format!("job {}: binding", job.job_id))?;
            let provider_ref = provider
                .job_ref(&binding)
                .with_context(|| format!("job {}: invalid binding", job.job_id))?;
            Ok(JobRecord {
                tenant_id: tenant.as_ref().to_owned(),
                job_id: job.job_id.clone(),
                project: job.project.clone(),
                display_name: job.display_name.clone(),
                environment: job.environment.clone(),
                provider_id: job.provider.clone(),
                provider_kind: provider.kind().to_owned(),
                provider_ref,
            })
        })
        .collect()
}

impl Application {
    /// Connects the database, checks the providers, syncs the job catalog, resumes unfinished
    /// runs and binds the listener.
    ///
    /// # Errors
    /// Any of those steps failing, with a message that names the step.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.validate()?;
        let auth = Authenticator::from_settings(&settings.auth, settings.server.tls.as_ref())?;
        Self::build_with_auth(settings, auth).await
    }

    /// [`Application::build`] with an authenticator made by the caller (`dev` uses one that
    /// accepts the token it prints).
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with_auth(
        settings: Settings,
        auth: Authenticator,
    ) -> anyhow::Result<Application> {
        settings.validate()?;
        let tls = settings.server.tls.as_ref().map(tls_config).transpose()?;
        let store: Arc<dyn Store> =
            store::connect(&settings.database.url, settings.database.max_connections).await?;
        let providers = build_providers(&settings, true).await?;
        let jobs = catalog(&settings, &providers)?;
        store
            .sync_jobs(&TenantId::default_tenant(), &jobs)
            .await
            .context("cannot sync the job catalog")?;
        let runs = Arc::new(RunService::new(
            store,
            providers,
            CancellationToken::new(),
            settings.cluster.clone(),
        ));
        let resumed = runs
            .adopt_orphans()
            .await
            .context("cannot resume open runs")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        tracing::info!(
            jobs = jobs.len(),
            resumed,
            replica = runs.replica(),
            addr = %listener.local_addr()?,
            "gateway ready"
        );
        let state = AppState {
            runs,
            server: Arc::new(settings.server.clone()),
            metrics: metrics_handle(),
            auth: Arc::new(auth),
            openapi: crate::http::openapi::Document(Arc::new(crate::http::openapi::document())),
        };
        Ok(Application {
            listener,
            state,
            tls,
        })
    }

    /// The address it listens on (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // BUG if it fails: the listener was bound in `build`.
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The router this gateway serves (cheap: the state is shared), for in-process requests and
    /// for inspecting its routes.
    pub fn router(&self) -> axum::Router {
        router(self.state.clone())
    }

    /// A token that stops the gateway when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.runs.shutdown.clone()
    }

    /// Serves until `signal` completes or the shutdown token is cancelled; then stops accepting,
    /// ends the event streams (callers resume elsewhere with `Last-Event-ID`), stops the
    /// ingesters (their position is stored), and waits for in-flight requests.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let token = self.shutdown_token();
        let stop = {
            let token = token.clone();
            async move {
                tokio::select! {
                    () = signal => {}
                    () = token.cancelled() => {}
                }
                tracing::info!("shutting down");
                token.cancel();
            }
        };
        let maintenance = tokio::spawn(Arc::clone(&self.state.runs).maintain());
        // ConnectInfo gives handlers the peer address for the audit log.
        let app = router(self.state).into_make_service_with_connect_info::<SocketAddr>();
        let served = match self.tls {
            None => {
                let serving = axum::serve(self.listener, app).with_graceful_shutdown(stop);
                // In-flight requests get a grace period once the shutdown starts; a client that
                // trickles a request (or never finishes one) cannot hold the process up longer.
                let deadline = async {
                    token.cancelled().await;
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                };
                tokio::select! {
                    served = serving => served.map_err(anyhow::Error::from),
                    () = deadline => {
                        tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still open; stopping anyway");
                        Ok(())
                    }
                }
            }
            Some(config) => {
                let handle = axum_server::Handle::new();
                let stopper = handle.clone();
                tokio::spawn(async move {
                    stop.await;
                    stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
                });
                let listener = self.listener.into_std()?;
                axum_server::from_tcp_rustls(
                    listener,
                    axum_server::tls_rustls::RustlsConfig::from_config(config),
                )?
                .handle(handle)
                .serve(app)
                .await
                .map_err(anyhow::Error::from)
            }
        };
        // Maintenance gives this replica's leases up once it sees the shutdown.
        token.cancel();
        let _ = maintenance.await;
        served?;
        Ok(())
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
