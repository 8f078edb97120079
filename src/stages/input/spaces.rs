//! Wazuh 5's event streams, one per space.
//!
//! The engine's file output writes each space's events to its own
//! streamlog channel, `{space}-wazuh-events-v5`, in a directory of that
//! name under the logs directory (`standard-…`, `custom-…`). The daemon
//! follows `input.alerts_file` and, with `input.follow_spaces`, every
//! other channel beside it, each with its own tailer and bookmark.

use std::path::{Path, PathBuf};

/// The suffix of an event channel's name.
pub const CHANNEL_SUFFIX: &str = "-wazuh-events-v5";

/// A stream to follow: its stable name, and the name its bookmark goes by
/// (`""` for `input.alerts_file`, the channel for the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub path: PathBuf,
    pub bookmark: String,
}

/// The other spaces' channels beside `primary`
/// (`<logs>/<channel>/<channel>.json`), present now, in name order. Empty
/// when `primary` is not an event channel's stable name.
pub fn other_channels(primary: &Path) -> Vec<Stream> {
    let channel = |p: &Path| -> Option<String> {
        let name = p.file_stem()?.to_str()?;
        let dir = p.parent()?.file_name()?.to_str()?;
        (name == dir && name.ends_with(CHANNEL_SUFFIX)).then(|| name.to_owned())
    };
    let (Some(ours), Some(logs)) = (channel(primary), primary.parent().and_then(Path::parent))
    else {
        return Vec::new();
    };
    let ext = primary
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("json");
    let mut found: Vec<Stream> = std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            (name != ours && name.ends_with(CHANNEL_SUFFIX)).then(|| Stream {
                path: e.path().join(format!("{name}.{ext}")),
                bookmark: name,
            })
        })
        .collect();
    found.sort_by(|a, b| a.bookmark.cmp(&b.bookmark));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_spaces_channels_are_found_beside_ours() {
        let logs = tempfile::tempdir().unwrap();
        for d in [
            "standard-wazuh-events-v5",
            "custom-wazuh-events-v5",
            "test-wazuh-events-v5",
            "alerts",
            "api",
        ] {
            std::fs::create_dir(logs.path().join(d)).unwrap();
        }
        std::fs::write(logs.path().join("ossec.log"), b"").unwrap();
        let ours = logs
            .path()
            .join("standard-wazuh-events-v5/standard-wazuh-events-v5.json");
        let found = other_channels(&ours);
        let names: Vec<&str> = found.iter().map(|s| s.bookmark.as_str()).collect();
        assert_eq!(names, ["custom-wazuh-events-v5", "test-wazuh-events-v5"]);
        assert_eq!(
            found[0].path,
            logs.path()
                .join("custom-wazuh-events-v5/custom-wazuh-events-v5.json")
        );
        // Not an event channel (Wazuh 4's alerts.json): nothing more.
        assert!(other_channels(&logs.path().join("alerts/alerts.json")).is_empty());
    }
}
