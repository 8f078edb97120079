//! Injected failures, for the tests that check that a dead component takes
//! the daemon down (a non-zero exit and no more watchdog pings) instead of
//! leaving it stalled. `WAZUH_MISP_FAULT=writer|tailer|worker` makes that
//! component panic on its first unit of work. Debug builds only: in a
//! release build [`inject`] is empty.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Writer,
    Tailer,
    Worker,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Writer => "writer",
            Component::Tailer => "tailer",
            Component::Worker => "worker",
        }
    }
}

#[cfg(debug_assertions)]
pub fn inject(c: Component) {
    static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| std::env::var("WAZUH_MISP_FAULT").ok());
    if chosen.as_deref() == Some(c.as_str()) {
        panic!("injected fault in the {} (WAZUH_MISP_FAULT)", c.as_str());
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn inject(_: Component) {}
