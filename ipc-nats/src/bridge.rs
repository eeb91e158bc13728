//! Running routes on a thread and tokio runtime of their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;

use async_nats::ServerAddr;
use async_nats::jetstream;
use tracing::Instrument;

use crate::counters::Counters;
use crate::feeder::Feeder;
use crate::publisher::Publisher;
use crate::settings::{NatsSettings, connect};

/// One JetStream route of a [`Bridge`].
pub enum Route {
    /// A local ring published into a stream.
    Publish {
        /// The route's name (for logs and metrics: the ring's name, say).
        name: String,
        /// The stream's name.
        stream: String,
        /// The publisher.
        publisher: Publisher,
    },
    /// A local ring fed from a durable consumer.
    Feed {
        /// The route's name.
        name: String,
        /// The stream's name.
        stream: String,
        /// The feeder.
        feeder: Feeder,
    },
}

/// What a running route shows: its name, direction, stream and counters.
#[derive(Clone, Debug)]
pub struct RouteStatus {
    /// The route's name.
    pub name: String,
    /// `"publish"` or `"feed"`.
    pub direction: &'static str,
    /// The stream's name.
    pub stream: String,
    /// Its counters, connection ones included.
    pub counters: Arc<Counters>,
}

/// [`Bridge::start`] refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A server URL does not parse.
    #[error("invalid NATS server {server:?}: {reason}")]
    BadServer {
        /// The URL.
        server: String,
        /// Why.
        reason: String,
    },
    /// The thread or the runtime could not be made.
    #[error("starting the JetStream thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// JetStream routes running on a thread of their own (a single-threaded tokio runtime); each
/// route has its own NATS connection, so one route's failures never stall another's. Stopped
/// (and joined) when dropped.
pub struct Bridge {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    routes: Vec<RouteStatus>,
}

impl Bridge {
    /// Starts `routes`, connecting to the servers `nats` names (in the background: servers
    /// that are down are retried forever, and the routes wait).
    pub fn start(nats: NatsSettings, routes: Vec<Route>) -> Result<Bridge, StartError> {
        for server in &nats.servers {
            server
                .parse::<ServerAddr>()
                .map_err(|e| StartError::BadServer { server: server.clone(), reason: e.to_string() })?;
        }
        let mut statuses = Vec::with_capacity(routes.len());
        let mut tasks = Vec::with_capacity(routes.len());
        for mut route in routes {
            let counters = Arc::new(Counters::default());
            let status = match &mut route {
                Route::Publish { name, stream, publisher } => {
                    publisher.set_counters(counters.clone());
                    RouteStatus { name: name.clone(), direction: "publish", stream: stream.clone(), counters }
                }
                Route::Feed { name, stream, feeder } => {
                    feeder.set_counters(counters.clone());
                    RouteStatus { name: name.clone(), direction: "feed", stream: stream.clone(), counters }
                }
            };
            statuses.push(status.clone());
            tasks.push((route, status));
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("jetstream".into()).spawn(move || {
            // Local tasks: a ring handle is `Send` but not `Sync`, and this thread is the only
            // one that runs them.
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let mut handles = Vec::new();
                for (route, status) in tasks {
                    let (nats, stop) = (nats.clone(), stopping.clone());
                    // Every event of the route names the relay and the route.
                    let span = tracing::info_span!("jetstream", relay = %nats.name, route = %status.name, direction = status.direction);
                    handles.push(tokio::task::spawn_local(run_route(nats, route, status, stop).instrument(span)));
                }
                for handle in handles {
                    let _ = handle.await;
                }
            });
        })?;
        Ok(Bridge { stop, thread: Some(thread), routes: statuses })
    }

    /// The routes, in the order given.
    pub fn routes(&self) -> &[RouteStatus] {
        &self.routes
    }
}

async fn run_route(nats: NatsSettings, route: Route, status: RouteStatus, stop: Arc<AtomicBool>) {
    let mut settings = nats.clone();
    settings.name = format!("{} {} {}", nats.name, status.direction, status.name);
    let client = match connect(&settings, status.counters.clone()).await {
        Ok(client) => client,
        Err(e) => {
            Counters::add(&status.counters.errors, 1);
            tracing::error!(event = "jetstream_connect_failed", route = %status.name, error = %e, "cannot connect to NATS");
            return;
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(nats.request_timeout)
        // Acknowledgements abandoned after a failure hold their permit until this timeout.
        .ack_timeout(nats.request_timeout)
        .max_ack_inflight(1 << 16)
        .backpressure_on_inflight(true)
        .build(client);
    match route {
        Route::Publish { publisher, .. } => publisher.run(js, stop).await,
        Route::Feed { feeder, .. } => feeder.run(js, stop).await,
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
