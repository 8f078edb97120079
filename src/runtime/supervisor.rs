//! The owner of every thread and task the daemon runs.
//!
//! Components are started through a [`Supervisor`], never with a bare
//! `tokio::spawn` or `std::thread::spawn`: it tracks them (a tokio-util
//! [`TaskTracker`], with a token per OS thread), and reports a component
//! that ends or panics before shutdown was asked for as a [`Death`]. The
//! daemon's top level awaits the first death and exits non-zero, so that
//! systemd restarts it from the bookmark instead of it running on with a
//! stage missing.

use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A component that stopped when it should not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    pub component: &'static str,
    /// "panicked: <message>", or what it returned.
    pub how: String,
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} {}", self.component, self.how)
    }
}

/// What a component's body returns: `Ok` for a normal end, which is a
/// death unless shutdown was asked for.
pub type Outcome = Result<(), String>;

pub struct Supervisor {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    deaths: mpsc::UnboundedSender<Death>,
    /// Every task, to end what is left when shutdown's grace runs out.
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl Supervisor {
    /// A supervisor and the receiving end of its deaths.
    pub fn new() -> (Supervisor, mpsc::UnboundedReceiver<Death>) {
        let (deaths, rx) = mpsc::unbounded_channel();
        (
            Supervisor {
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                deaths,
                tasks: std::sync::Mutex::new(Vec::new()),
            },
            rx,
        )
    }

    /// Cancelled when shutdown begins: components that run until told to
    /// stop wait on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    fn report(
        deaths: &mpsc::UnboundedSender<Death>,
        shutdown: &CancellationToken,
        component: &'static str,
        ended: std::thread::Result<Outcome>,
    ) {
        let how = match ended {
            Err(panic) => format!("panicked: {}", panic_message(&*panic)),
            Ok(_) if shutdown.is_cancelled() => return,
            Ok(Ok(())) => "ended".to_owned(),
            Ok(Err(why)) => format!("ended: {why}"),
        };
        let _ = deaths.send(Death { component, how });
    }

    /// Runs `body` as a task of the runtime; [`Supervisor::abort_tasks`]
    /// ends it if it outlives shutdown's grace.
    pub fn spawn<F>(&self, component: &'static str, body: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let handle = self.spawn_unabortable(component, body);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle.abort_handle());
        handle
    }

    /// [`Supervisor::spawn`] for a task that must finish what it is doing
    /// (the state saver, whose save runs on the blocking pool): it is
    /// awaited, never aborted, and must end soon after the shutdown token.
    pub fn spawn_unabortable<F>(
        &self,
        component: &'static str,
        body: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let (deaths, shutdown) = (self.deaths.clone(), self.shutdown.clone());
        self.tracker.spawn(async move {
            let ended = AssertUnwindSafe(body).catch_unwind().await;
            Self::report(&deaths, &shutdown, component, ended);
        })
    }

    /// Runs `body` on an OS thread of its own, named `component`.
    pub fn spawn_thread<F>(&self, component: &'static str, body: F) -> std::io::Result<()>
    where
        F: FnOnce() -> Outcome + Send + 'static,
    {
        let (deaths, shutdown) = (self.deaths.clone(), self.shutdown.clone());
        let token = self.tracker.token();
        std::thread::Builder::new()
            .name(component.into())
            .spawn(move || {
                let ended = std::panic::catch_unwind(AssertUnwindSafe(body));
                Self::report(&deaths, &shutdown, component, ended);
                drop(token);
            })
            .map(drop)
    }

    /// Begins shutdown: from now on a component that ends is not a death.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
    }

    /// Waits until every component has ended.
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// Ends every task still running (threads are told to stop by their
    /// own flags): what they held is not acknowledged, so it is read
    /// again at the next start.
    pub fn abort_tasks(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_component_that_ends_or_panics_is_a_death_until_shutdown() {
        let (s, mut deaths) = Supervisor::new();
        s.spawn("batcher", async { Ok(()) });
        assert_eq!(
            deaths.recv().await.unwrap(),
            Death {
                component: "batcher",
                how: "ended".into()
            }
        );
        s.spawn_thread("tailer", || panic!("boom")).unwrap();
        assert_eq!(
            deaths.recv().await.unwrap(),
            Death {
                component: "tailer",
                how: "panicked: boom".into()
            }
        );
        s.spawn("worker", async { Err("the writer is gone".into()) });
        assert_eq!(
            deaths.recv().await.unwrap().how,
            "ended: the writer is gone"
        );
        let token = s.shutdown_token();
        s.spawn("saver", async move {
            token.cancelled().await;
            Ok(())
        });
        s.begin_shutdown();
        s.wait().await;
        assert!(deaths.try_recv().is_err(), "ending at shutdown is no death");
    }
}
