//! A stand-in for Wazuh 5's event ingestion: an HTTP server on a Unix
//! socket that takes `POST /events/enriched` batches and parses them as
//! the engine's `ndJsonParser.hpp` does (a header line, the `\nE `
//! delimiter, continuation lines unindented, the agent id a string of
//! digits), answering 200, or 400, 413 and 5xx on demand. What it
//! accepted is kept for tests to read.

use crate::output::ndjson;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One accepted batch: its header and its events (`queue:location:message`).
#[derive(Debug, Clone)]
pub struct Batch {
    pub header: Value,
    pub events: Vec<String>,
}

#[derive(Default)]
struct Inner {
    accepted: Vec<Batch>,
    /// Statuses to answer the next requests with, instead of taking them.
    next: VecDeque<u16>,
    requests: usize,
}

/// A running stand-in. [`EngineSim::stop`] removes the socket.
pub struct EngineSim {
    inner: Arc<Mutex<Inner>>,
    path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn events(State(inner): State<Arc<Mutex<Inner>>>, body: Bytes) -> (StatusCode, String) {
    let mut s = inner.lock().unwrap_or_else(|e| e.into_inner());
    s.requests += 1;
    if let Some(status) = s.next.pop_front() {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            code,
            format!("{{\"error\": \"injected\", \"code\": {status}}}"),
        );
    }
    match ndjson::parse_batch(&body) {
        Ok((header, events)) => {
            s.accepted.push(Batch {
                header: serde_json::from_str(&header).unwrap_or(Value::Null),
                events: events
                    .into_iter()
                    .map(|e| String::from_utf8_lossy(&e).into_owned())
                    .collect(),
            });
            (StatusCode::OK, String::new())
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("{{\"error\": \"NDJson parser error, {e}\", \"code\": 400}}"),
        ),
    }
}

impl EngineSim {
    /// Serves on a new socket at `path`.
    pub async fn start(path: &Path) -> std::io::Result<EngineSim> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/events/enriched", post(events))
            .with_state(inner.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(EngineSim {
            inner,
            path: path.to_owned(),
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Answers the next `times` requests with `status`, taking nothing.
    pub fn respond(&self, status: u16, times: usize) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.next.extend(std::iter::repeat_n(status, times));
    }

    pub fn batches(&self) -> Vec<Batch> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accepted
            .clone()
    }

    /// Requests received, answered or not.
    pub fn requests(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
    }

    /// Every accepted event's message (after the location), as JSON, with
    /// its batch's agent id.
    pub fn events(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for b in self.batches() {
            let agent = b.header["wazuh"]["agent"]["id"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            for e in &b.events {
                let Some((_, _, message)) = crate::output::frame::parse(e.as_bytes()) else {
                    continue;
                };
                out.push((
                    agent.clone(),
                    serde_json::from_slice(message).unwrap_or(Value::Null),
                ));
            }
        }
        out
    }

    pub async fn stop(&mut self) {
        super::shut_down(self.stop.take(), self.task.take()).await;
        let _ = std::fs::remove_file(&self.path);
    }
}
