//! `wazuh-misp check-config`: a checklist of everything the daemon needs,
//! each item ✓ or ✗, and for each ✗ how to fix it.

use crate::config::{self, Config};
use crate::lookup::MispClient;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

struct Report<'w, W: Write> {
    out: &'w mut W,
    failed: usize,
}

impl<W: Write> Report<'_, W> {
    fn item(&mut self, ok: bool, what: &str, fix: impl FnOnce() -> String) {
        if ok {
            let _ = writeln!(self.out, "✓ {what}");
        } else {
            self.failed += 1;
            let _ = writeln!(self.out, "✗ {what}\n    fix: {}", fix());
        }
    }
}

pub async fn run(path: &Path, out: &mut impl Write) -> ExitCode {
    let mut r = Report { out, failed: 0 };
    let cfg = match config::load(path) {
        Ok(c) => {
            r.item(
                true,
                &format!("config {} parses and is valid", path.display()),
                String::new,
            );
            c
        }
        Err(e) => {
            let msg = e.to_string();
            r.item(false, &format!("config {}: {msg}", path.display()), || {
                "correct that key; every key is documented in config/wazuh-misp.toml".into()
            });
            return ExitCode::from(1);
        }
    };
    check_all(&cfg, &mut r).await;
    let _ = writeln!(
        r.out,
        "{}",
        if r.failed == 0 {
            "all checks passed".to_string()
        } else {
            format!("{} check(s) failed", r.failed)
        }
    );
    if r.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The mirror's first sync page, as the daemon will ask for it: the key
/// may run a paged restSearch with the sync filters, and how large the
/// answer is.
async fn check_sync<W: Write>(cfg: &Config, client: &MispClient, r: &mut Report<'_, W>) {
    let q = crate::lookup::client::SyncQuery {
        filters: &cfg.misp.sync,
        page: 1,
        limit: *cfg.misp.sync_page_size,
        since: None,
    };
    let started = std::time::Instant::now();
    let page = client.sync_page(&q).await;
    let what = match &page {
        Ok(p) => format!(
            "mirror sync: the first page holds {} attributes ({} bytes, {} ms; {} dropped by MISP's warninglists){}",
            p.attributes.len(),
            p.bytes,
            started.elapsed().as_millis(),
            p.skipped,
            if p.attributes.len() as u64 + p.skipped >= u64::from(*cfg.misp.sync_page_size) {
                " and more pages follow"
            } else {
                ""
            }
        ),
        Err(_) => "mirror sync: the key may run a paged restSearch with the sync filters".into(),
    };
    r.item(page.is_ok(), &what, || match &page {
        Err(e) => format!(
            "{e} ({}): the daemon falls back to per-value queries until a sync succeeds; check [misp.sync] and misp.sync_page_size",
            e.kind()
        ),
        Ok(_) => String::new(),
    });
}

async fn check_all<W: Write>(cfg: &Config, r: &mut Report<'_, W>) {
    let key = cfg.resolve_api_key();
    r.item(key.is_ok(), "MISP API key is present", || {
        key.as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    });
    if let Some(p) = &cfg.misp.api_key_file {
        let mode = std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        r.item(
            mode & 0o004 == 0,
            &format!("key file {} is not world-readable", p.display()),
            || {
                format!(
                    "chmod 0640 {} && chown root:wazuh {}",
                    p.display(),
                    p.display()
                )
            },
        );
    }
    if let Ok(key) = &key {
        match MispClient::new(&cfg.misp, key) {
            Ok(client) => {
                let answer = client
                    .search_with(&["127.0.0.1".to_string()], Some(1))
                    .await;
                let ok = answer.is_ok();
                r.item(ok, &format!("MISP at {} answers an authenticated restSearch", crate::config::redact_url(&cfg.misp.url)), || match &answer {
                    Err(e) => format!("{e} ({}: check misp.url, the key, and TLS: misp.ca_file for a private CA)", e.kind()),
                    Ok(_) => String::new(),
                });
                if ok && *cfg.misp.mode == crate::config::MispMode::Mirror {
                    check_sync(cfg, &client, r).await;
                }
            }
            Err(e) => r.item(false, "MISP client can be built", || format!("{e:#}")),
        }
    }
    let alerts = &cfg.input.alerts_file;
    let readable = std::fs::File::open(alerts);
    r.item(
        readable.is_ok(),
        &format!("alerts file {} is readable", alerts.display()),
        || {
            format!(
                "{}; run as a member of group wazuh (alerts.json is wazuh:wazuh 0640)",
                readable
                    .as_ref()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            )
        },
    );
    let line = cfg.wazuh_line();
    r.item(
        true,
        &format!(
            "Wazuh {} (wazuh.version = {:?})",
            line.as_str(),
            *cfg.wazuh.version
        ),
        String::new,
    );
    if line == crate::config::WazuhLine::V5 {
        let asset = std::path::Path::new(crate::config::WAZUH5_ROOT)
            .join("etc/outputs/default/file-output-integrations.yml");
        let enabled = std::fs::read_to_string(&asset).is_ok_and(|t| {
            t.lines()
                .any(|l| l.trim().replace(' ', "") == "enabled:true")
        });
        r.item(
            enabled,
            &format!(
                "the engine writes its event stream ({} enabled)",
                asset.display()
            ),
            || {
                "set `enabled: true` in that file and restart wazuh-manager (README, \"Wazuh 5\")"
                    .into()
            },
        );
        if *cfg.input.follow_spaces {
            for other in crate::input::spaces::other_channels(alerts) {
                r.item(
                    true,
                    &format!("also following {}", other.path.display()),
                    String::new,
                );
            }
        }
    }
    let sock = &cfg.output.queue_socket;
    let meta = std::fs::metadata(sock);
    let is_socket = meta.as_ref().is_ok_and(|m| m.file_type().is_socket());
    r.item(
        is_socket,
        &format!("queue socket {} exists", sock.display()),
        || "start wazuh-manager (analysisd creates the socket), or fix output.queue_socket".into(),
    );
    if is_socket && line == crate::config::WazuhLine::V5 {
        let reachable = std::os::unix::net::UnixStream::connect(sock);
        r.item(
            reachable.is_ok(),
            &format!(
                "the engine's ingestion socket {} accepts connections",
                sock.display()
            ),
            || {
                format!(
                    "{}; the socket is 0660: run as its group",
                    reachable
                        .as_ref()
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                )
            },
        );
    } else if is_socket {
        let writable = std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.connect(sock));
        r.item(
            writable.is_ok(),
            &format!("queue socket {} accepts our datagrams", sock.display()),
            || {
                format!(
                    "{}; the socket is wazuh:wazuh 0660: run as group wazuh",
                    writable
                        .as_ref()
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                )
            },
        );
    }
    let state = crate::runtime::prepare_state_dir(&cfg.input.state_dir);
    r.item(
        state.is_ok(),
        &format!("state dir {} is writable", cfg.input.state_dir.display()),
        || {
            state
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        },
    );
}
