//! Wiring: build the store, adapters, actions and router from a [`Config`],
//! then run the HTTP server, the workers and housekeeping until shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret};
use crate::http::{self, AppState, Source};
use crate::pipeline::{
    Actions, Backoff, ClassifyAction, RulesClassifier, WorkerPool, WorkerSettings,
};
use crate::store::{InlineClassify, Millis, Store, now_millis, sqlite::SqliteStore};

/// How often expired dedup keys and old records are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct App {
    listener: TcpListener,
    state: Arc<AppState>,
    pool: WorkerPool,
    config: Config,
}

impl App {
    /// Opens the store and binds the listener; nothing runs until
    /// [`App::run_until_stopped`].
    pub async fn build(config: Config) -> anyhow::Result<App> {
        // The recorder first: metric handles made before it would record nowhere.
        let metrics = crate::telemetry::metrics_handle();
        let rules =
            RulesClassifier::new(&config.classifier.rules).context("compiling classifier rules")?;
        let follow_ups: HashMap<String, Vec<String>> = config
            .sources
            .iter()
            .map(|s| (s.name.clone(), s.action_names()))
            .collect();
        let store: Arc<dyn Store> = match config.sqlite_path() {
            Some(path) => {
                // Without an LLM the rules need no I/O: classify while storing.
                let inline = config.classifier.llm.is_none().then(|| {
                    let rules = rules.clone();
                    InlineClassify {
                        classify: Box::new(move |text| rules.classify(text)),
                        follow_ups: follow_ups.clone(),
                        session_ttl_ms: config.conversations.session_ttl.0.as_millis() as Millis,
                    }
                });
                let store = SqliteStore::open_with(
                    &path,
                    config.store.busy_timeout.0,
                    config.store.max_rejections,
                    inline,
                )
                .with_context(|| format!("opening the store at {}", path.display()))?;
                store.set_max_backlog(config.store.max_backlog);
                Arc::new(store)
            }
            None => anyhow::bail!(
                "store.url {:?} is not supported by this build",
                config.store.url
            ),
        };
        let listener = TcpListener::bind(config.listen_addr()?)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let local = listener.local_addr()?;

        let mut sources = HashMap::new();
        for s in &config.sources {
            let provider = crate::providers::build(s);
            if !provider.is_signed() {
                tracing::warn!(source = %s.name, provider = s.provider.as_str(), "Source has no secret: requests are not verified.");
            }
            sources.insert(s.name.clone(), Source::new(s.clone(), provider));
        }
        // One set of pooled clients, breakers and per-destination limits for
        // every outbound call (forwards, replies, the LLM classifier).
        let outbound = Arc::new(
            crate::pipeline::Outbound::from_config(&config.workers)
                .context("building the outbound HTTP clients")?,
        );
        let actions = Actions {
            classify: Some(Arc::new(ClassifyAction {
                rules,
                llm: config.classifier.llm.as_ref().map(|llm| {
                    Arc::new(crate::pipeline::llm::LlmClassifier::new(
                        llm,
                        outbound.clone(),
                    )) as Arc<dyn crate::pipeline::action::FallbackClassifier>
                }),
                conversations: Some(crate::pipeline::conversations::Conversations::new(
                    store.clone(),
                    config.conversations.session_ttl.0,
                )),
                follow_ups,
            })),
            sources: config.sources.iter().map(|s| s.name.clone()).collect(),
            by_source: crate::pipeline::build_actions(&config, store.clone(), outbound.clone()),
        };
        let admin_token = match &config.server.admin_token {
            Some(t) => t.clone(),
            None => {
                let token = crate::domain::new_id("adm_");
                tracing::warn!(admin_token = %token, "No server.admin_token set; using this random one for this run.");
                Secret::new(token)
            }
        };
        let public_url = config
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{local}"))
            .trim_end_matches('/')
            .to_string();
        let state = Arc::new(AppState {
            sources,
            store: store.clone(),
            public_url,
            max_body_bytes: config.server.max_body_bytes,
            dedup_window: config.store.dedup_window.0,
            admin_token,
            started: Instant::now(),
            workers: config.workers.concurrency,
            ack_seconds: metrics::histogram!("inlet_ack_seconds"),
            metrics,
            outbound: outbound.clone(),
        });
        let w = &config.workers;
        let pool = WorkerPool::new(
            store,
            actions,
            WorkerSettings {
                concurrency: w.concurrency,
                max_attempts: w.max_attempts,
                backoff: Backoff {
                    base: w.backoff_base.0,
                    max: w.backoff_max.0,
                },
                lease: w.lease.0,
            },
        );
        Ok(App {
            listener,
            state,
            pool,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled: stops accepting, finishes
    /// in-flight requests, gives running jobs `server.shutdown_grace`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let grace = self.config.server.shutdown_grace.0;
        let workers = spawn_pipeline(self.pool.clone(), shutdown.clone(), grace)?;
        // Background threads idle while they keep up (see `priority`).
        let watching = Arc::new(());
        let store = self.state.store.clone();
        crate::priority::watch(
            move || {
                let q = store.gauges().snapshot();
                q.pending + q.in_flight
            },
            Arc::downgrade(&watching),
        )
        .context("starting the background watcher")?;
        let housekeeping = tokio::spawn(prune_loop(
            self.state.store.clone(),
            self.config.store.dedup_window.0,
            self.config.store.retention.0,
            shutdown.clone(),
        ));
        let router = http::router(self.state.clone());
        let server =
            http::server::serve(self.listener, self.state.clone(), router, shutdown.clone());
        let server = tokio::spawn(server);
        shutdown.cancelled().await;
        tracing::info!("Shutting down: finishing in-flight requests and running jobs.");
        match tokio::time::timeout(grace, server).await {
            Ok(r) => r.context("server task")?,
            Err(_) => tracing::warn!("In-flight requests did not finish in time."),
        }
        let _ = workers.await;
        housekeeping.abort();
        drop(watching);
        tracing::info!("Stopped.");
        Ok(())
    }
}

/// Runs the worker pool on a runtime of its own, whose threads run at
/// background priority (see `priority`): jobs never delay an ACK for a
/// core. Resolves when the pool has stopped.
fn spawn_pipeline(
    pool: WorkerPool,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("inlet-pipeline")
        .on_thread_start(crate::priority::lower_this_thread)
        .enable_all()
        .build()
        .context("starting the pipeline runtime")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("inlet-pipeline".into())
        .spawn(move || {
            rt.block_on(pool.run_until_stopped(shutdown, grace));
            // Outbound connections live on this runtime: it ends with the pool.
            drop(rt);
            let _ = done_tx.send(());
        })
        .context("starting the pipeline thread")?;
    Ok(done_rx)
}

async fn prune_loop(
    store: Arc<dyn Store>,
    dedup_window: Duration,
    retention: Duration,
    stop: CancellationToken,
) {
    loop {
        let now = now_millis();
        let dedup_cutoff = now - dedup_window.as_millis() as i64;
        let retention_cutoff = now - retention.as_millis() as i64;
        if let Err(e) = store.prune(dedup_cutoff, retention_cutoff).await {
            tracing::warn!(error = %e, "Pruning failed; will retry.");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
