//! One MISP for a scenario, behind MISP's own REST API: the in-repo
//! simulator, or a real MISP 2.5 (`../shared/real-misp`). A scenario
//! populates either one the same way, through `/events/add`,
//! `/attributes/edit`, `/attributes/delete`, `/events/publish`, tags and
//! warninglists, and asserts the same outcome on both: where they
//! disagree, the simulator is wrong.
//!
//! Real MISP is started once per test binary with `up.sh` on
//! [`REAL_MISP_PORT`] (idempotent: CI starts it before the suite, and
//! each binary finds it running), or taken from `REAL_MISP_URL` and
//! `REAL_MISP_KEY`. Its scenarios run one at a time, each on an emptied
//! MISP. Without `../shared/real-misp` they print SKIPPED and pass.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use wazuh_misp::sim::{MispSim, SimData};

/// Where the suite's real MISP listens (MariaDB on +1, Redis on +2).
pub const REAL_MISP_PORT: u16 = 18088;

/// The warninglist the scenarios enable: MISP ships it as
/// `lists/public-dns-v4` (our fixture is an excerpt of the same list).
pub const PUBLIC_DNS_V4: &str = "List of known IPv4 public DNS resolvers";

/// Which MISP a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sim,
    Real,
}

pub struct Misp {
    pub backend: Backend,
    pub url: String,
    pub key: String,
    http: reqwest::Client,
    /// The simulator, when it is one (kept alive while the scenario runs).
    pub sim: Option<MispSim>,
    /// Real MISP is one for the whole binary: its scenarios take turns.
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

/// An attribute as MISP created it.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub uuid: String,
    pub value: String,
}

/// An event as MISP created it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub uuid: String,
    pub attributes: Vec<Created>,
}

impl Event {
    pub fn attribute(&self, value: &str) -> &Created {
        self.attributes
            .iter()
            .find(|a| a.value == value)
            .unwrap_or_else(|| panic!("no attribute {value} in event {}", self.id))
    }
}

fn real_misp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/real-misp")
}

/// `up.sh`'s MISP_URL and MISP_KEY, started once per binary.
fn real_misp() -> Option<&'static (String, String)> {
    static STARTED: OnceLock<Option<(String, String)>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            if let (Ok(url), Ok(key)) = (
                std::env::var("REAL_MISP_URL"),
                std::env::var("REAL_MISP_KEY"),
            ) {
                return Some((url, key));
            }
            let up = real_misp_dir().join("up.sh");
            if !up.is_file() {
                return None;
            }
            let out = std::process::Command::new("bash")
                .arg(&up)
                .arg(REAL_MISP_PORT.to_string())
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run ../shared/real-misp/up.sh");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "../shared/real-misp/up.sh {REAL_MISP_PORT} failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let field = |name: &str| {
                stdout
                    .lines()
                    .rev()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_else(|| panic!("up.sh printed no {name}:\n{stdout}"))
                    .trim()
                    .to_owned()
            };
            Some((field("MISP_URL="), field("MISP_KEY=")))
        })
        .as_ref()
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
}

impl Misp {
    /// An empty simulator holding MISP's warninglists, none enabled.
    pub async fn sim() -> Misp {
        let list: Value = serde_json::from_str(include_str!(
            "../../config/demo/warninglist-public-dns-v4.json"
        ))
        .unwrap();
        let mut list = list;
        // The fixture is an excerpt of MISP's list; it answers to MISP's name.
        list["name"] = PUBLIC_DNS_V4.into();
        let data = SimData::from_events(Vec::<Value>::new()).with_available_warninglist(&list);
        let sim = MispSim::start(&data, super::KEY).await.unwrap();
        Misp {
            backend: Backend::Sim,
            url: sim.url(),
            key: super::KEY.into(),
            http: client(),
            sim: Some(sim),
            _turn: None,
        }
    }

    /// The suite's real MISP, emptied, for this scenario alone; `None`
    /// (SKIPPED printed) without `../shared/real-misp`.
    pub async fn real(scenario: &str) -> Option<Misp> {
        let Some((url, key)) = real_misp() else {
            eprintln!(
                "SKIPPED: {scenario} on real MISP: {} not found (../shared is not beside the checkout; CI always has it)",
                real_misp_dir().display()
            );
            return None;
        };
        let turn = TURN.lock().await;
        let m = Misp {
            backend: Backend::Real,
            url: url.clone(),
            key: key.clone(),
            http: client(),
            sim: None,
            _turn: Some(turn),
        };
        m.wipe().await;
        Some(m)
    }

    pub async fn of(backend: Backend, scenario: &str) -> Option<Misp> {
        match backend {
            Backend::Sim => Some(Misp::sim().await),
            Backend::Real => Misp::real(scenario).await,
        }
    }

    /// `POST path` with `body`, MISP's JSON answer (any status).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .header("Authorization", &self.key)
            .header("Accept", "application/json")
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .header("Authorization", &self.key)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.post(path, body).await;
        assert_eq!(status, 200, "POST {path} on {:?}: {v}", self.backend);
        v
    }

    /// Every event deleted, every warninglist disabled.
    async fn wipe(&self) {
        if let Value::Array(events) = self.get("/events/index").await {
            for e in events {
                let id = e["id"].as_str().unwrap_or_default().to_owned();
                self.ok(&format!("/events/delete/{id}"), json!({})).await;
            }
        }
        if let Some(lists) = self.get("/warninglists/index").await["Warninglists"].as_array() {
            let enabled: Vec<Value> = lists
                .iter()
                .filter(|w| w["Warninglist"]["enabled"] == true)
                .map(|w| w["Warninglist"]["name"].clone())
                .collect();
            if !enabled.is_empty() {
                self.ok(
                    "/warninglists/toggleEnable",
                    json!({"name": enabled, "enabled": false}),
                )
                .await;
            }
        }
    }

    /// `/events/add`: an event with `attributes` (MISP's attribute JSON)
    /// and event `tags`.
    pub async fn add_event(
        &self,
        info: &str,
        published: bool,
        tags: &[&str],
        attributes: Vec<Value>,
    ) -> Event {
        let tags: Vec<Value> = tags.iter().map(|t| json!({"name": t})).collect();
        let v = self
            .ok(
                "/events/add",
                json!({"Event": {"info": info, "published": published, "distribution": 0,
                    "threat_level_id": 2, "analysis": 2, "Tag": tags, "Attribute": attributes}}),
            )
            .await;
        let e = &v["Event"];
        Event {
            id: e["id"].as_str().unwrap().into(),
            uuid: e["uuid"].as_str().unwrap().into(),
            attributes: e["Attribute"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| Created {
                    id: a["id"].as_str().unwrap().into(),
                    uuid: a["uuid"].as_str().unwrap().into(),
                    value: a["value"].as_str().unwrap().into(),
                })
                .collect(),
        }
    }

    pub async fn add_attribute(&self, event: &Event, attribute: Value) -> Created {
        let v = self
            .ok(&format!("/attributes/add/{}", event.id), attribute)
            .await;
        let a = &v["Attribute"];
        Created {
            id: a["id"].as_str().unwrap().into(),
            uuid: a["uuid"].as_str().unwrap().into(),
            value: a["value"].as_str().unwrap().into(),
        }
    }

    pub async fn publish(&self, event: &Event) {
        self.ok(&format!("/events/publish/{}", event.id), json!({}))
            .await;
    }

    pub async fn edit(&self, a: &Created, changes: Value) {
        self.ok(&format!("/attributes/edit/{}", a.id), changes)
            .await;
    }

    pub async fn soft_delete(&self, a: &Created) {
        self.ok(&format!("/attributes/delete/{}", a.id), json!({}))
            .await;
    }

    pub async fn hard_delete(&self, a: &Created) {
        self.ok(&format!("/attributes/delete/{}/1", a.id), json!({}))
            .await;
    }

    pub async fn attach_tag(&self, uuid: &str, tag: &str) {
        self.ok("/tags/attachTagToObject", json!({"uuid": uuid, "tag": tag}))
            .await;
    }

    pub async fn remove_tag(&self, uuid: &str, tag: &str) {
        self.ok(
            "/tags/removeTagFromObject",
            json!({"uuid": uuid, "tag": tag}),
        )
        .await;
    }

    pub async fn enable_warninglist(&self, name: &str) {
        let v = self
            .ok(
                "/warninglists/toggleEnable",
                json!({"name": name, "enabled": true}),
            )
            .await;
        assert_eq!(v["saved"], true, "{v}");
    }

    /// restSearch, unpaged: what MISP itself counts under `filters`.
    pub async fn search(&self, mut filters: Value) -> Vec<Value> {
        filters["returnFormat"] = "json".into();
        let v = self.ok("/attributes/restSearch", filters).await;
        v["response"]["Attribute"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The sightings MISP holds for attribute `uuid`.
    pub async fn sightings_of(&self, uuid: &str) -> Vec<Value> {
        let found = self
            .search(json!({"uuid": uuid, "includeSightings": true, "deleted": [0, 1]}))
            .await;
        found
            .first()
            .and_then(|a| a["Sighting"].as_array().cloned())
            .unwrap_or_default()
    }
}
