//! The shipped Wazuh 5 integration (`config/wazuh5/`): the integration,
//! decoder and rule YAML parse, have the shape the Content Manager takes,
//! and name only fields that the engine's schema defines
//! (`fixtures/wazuh5/engine-schema.json`, copied from wazuh/wazuh). The
//! engine and the indexer reject an asset that names any other field
//! (`docs/guide/migration/rules-4x-to-5x.md`, "The WCS is a closed,
//! validated schema").

use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

/// The engine's schema: field name → type.
struct Schema(serde_json::Map<String, Value>);

impl Schema {
    fn load() -> Schema {
        let text = std::fs::read_to_string(root().join("tests/fixtures/wazuh5/engine-schema.json"))
            .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        Schema(
            v["fields"]
                .as_object()
                .expect("engine-schema.json has fields")
                .clone(),
        )
    }

    fn kind(&self, field: &str) -> Option<&str> {
        self.0.get(field).and_then(|f| f["type"].as_str())
    }

    fn has(&self, field: &str) -> bool {
        self.kind(field).is_some()
    }
}

fn assets(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("config/wazuh5").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    v.sort();
    v
}

/// The `$references` inside a value: a bare `$field`, or the arguments
/// of a helper call `name(a, $b, ...)`.
fn references(value: &Value) -> Vec<String> {
    let Some(s) = value.as_str() else {
        return Vec::new();
    };
    let args = match (s.find('('), s.ends_with(')')) {
        (Some(open), true) => &s[open + 1..s.len() - 1],
        _ => s,
    };
    args.split(',')
        .map(str::trim)
        .filter_map(|a| a.strip_prefix('$'))
        .map(str::to_owned)
        .collect()
}

/// Checks one decoder; returns what is wrong with it.
fn decoder_problems(d: &Value, schema: &Schema) -> Vec<String> {
    let mut bad = Vec::new();
    let definitions: HashSet<String> = d["definitions"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let name = d["name"].as_str().unwrap_or("");
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() != 3 || parts[0] != "decoder" || parts[2] != "0" {
        bad.push(format!("name {name:?} is not decoder/<name>/0"));
    }
    if !d["enabled"].is_boolean() {
        bad.push("enabled is not a boolean".into());
    }
    if d["metadata"]["title"].as_str().is_none_or(str::is_empty) {
        bad.push("metadata.title is missing".into());
    }
    // A field read: a temporary (`_...`) or a schema field.
    let readable = |f: &str| f.starts_with('_') || schema.has(f);
    let mut reference = |r: String, bad: &mut Vec<String>| {
        if !definitions.contains(&r) && !readable(&r) {
            bad.push(format!(
                "reference ${r} is neither a definition nor a schema field"
            ));
        }
    };
    let checks =
        |c: &Value, bad: &mut Vec<String>, reference: &mut dyn FnMut(String, &mut Vec<String>)| {
            for item in c.as_array().into_iter().flatten() {
                for (field, cond) in item.as_object().into_iter().flatten() {
                    if !readable(field) {
                        bad.push(format!("check on {field}, not a schema field"));
                    }
                    for r in references(cond) {
                        reference(r, bad);
                    }
                }
            }
        };
    checks(&d["check"], &mut bad, &mut reference);
    for block in d["normalize"].as_array().into_iter().flatten() {
        for key in block.as_object().into_iter().flatten().map(|(k, _)| k) {
            if key != "check" && key != "map" && !key.starts_with("parse|") {
                bad.push(format!("normalize block has {key}"));
            }
        }
        checks(&block["check"], &mut bad, &mut reference);
        for item in block["map"].as_array().into_iter().flatten() {
            let Some(entry) = item.as_object().filter(|o| o.len() == 1) else {
                bad.push(format!("map entry {item} is not one field"));
                continue;
            };
            let (target, value) = entry.iter().next().unwrap();
            // Targets are event fields: a temporary would be removed.
            match schema.kind(target) {
                None => bad.push(format!("map writes {target}, not a schema field")),
                Some(kind) => {
                    let numeric =
                        matches!(kind, "long" | "float" | "short" | "byte" | "scaled_float");
                    if value.is_number() && !numeric {
                        bad.push(format!("map writes a number into {target} ({kind})"));
                    }
                    if value.is_string() && numeric && references(value).is_empty() {
                        bad.push(format!("map writes text into {target} ({kind})"));
                    }
                }
            }
            for r in references(value) {
                reference(r, &mut bad);
            }
        }
    }
    bad
}

/// Checks one rule; returns what is wrong with it.
fn rule_problems(r: &Value, schema: &Schema) -> Vec<String> {
    let mut bad = Vec::new();
    let levels = wazuh_misp::config::LEVELS_5X;
    if !r["level"].as_str().is_some_and(|l| levels.contains(&l)) {
        bad.push(format!("level {} is not one of {levels:?}", r["level"]));
    }
    if !r["status"]
        .as_str()
        .is_some_and(|s| ["experimental", "test", "stable"].contains(&s))
    {
        bad.push(format!("status {}", r["status"]));
    }
    if !r["enabled"].is_boolean() {
        bad.push("enabled is not a boolean".into());
    }
    if r["metadata"]["title"].as_str().is_none_or(str::is_empty) {
        bad.push("metadata.title is missing".into());
    }
    // The Content Manager requires it: logsource.product is the parent
    // integration's title.
    if r["logsource"]["product"] != wazuh_misp::filter::OUR_INTEGRATION {
        bad.push(format!(
            "logsource.product {} is not the integration's title",
            r["logsource"]["product"]
        ));
    }
    let detection = r["detection"].as_object().cloned().unwrap_or_default();
    let Some(condition) = detection.get("condition").and_then(Value::as_str) else {
        bad.push("detection.condition is missing".into());
        return bad;
    };
    let named: BTreeSet<&str> = detection
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "condition")
        .collect();
    for word in condition
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
    {
        let operator = ["and", "or", "not", "of", "1", "all", "them"].contains(&word);
        if !operator && !named.contains(word) {
            bad.push(format!(
                "condition names {word}, which detection does not define"
            ));
        }
    }
    for (name, selection) in &detection {
        if name == "condition" {
            continue;
        }
        let Some(fields) = selection.as_object() else {
            bad.push(format!("selection {name} is not a map of fields"));
            continue;
        };
        for key in fields.keys() {
            let field = key.split('|').next().unwrap();
            if !schema.has(field) {
                bad.push(format!("{name} matches on {field}, not a schema field"));
            }
        }
    }
    bad
}

#[test]
fn the_integration_names_its_category_and_our_name() {
    let i = yaml(&root().join("config/wazuh5/integration.yml"));
    let categories = [
        "access-management",
        "applications",
        "cloud-services",
        "network-activity",
        "security",
        "system-activity",
        "other",
    ];
    assert!(
        categories.contains(&i["category"].as_str().unwrap()),
        "{}",
        i["category"]
    );
    // The self-loop guard recognises our events by this name.
    assert_eq!(i["metadata"]["title"], wazuh_misp::filter::OUR_INTEGRATION);
    assert!(i["metadata"]["author"].is_string());
    assert_eq!(i["enabled"], true);
}

#[test]
fn the_decoder_writes_and_reads_only_schema_fields() {
    let schema = Schema::load();
    let decoders = assets("decoders");
    assert!(!decoders.is_empty());
    for path in decoders {
        let problems = decoder_problems(&yaml(&path), &schema);
        assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
    }
}

#[test]
fn the_rules_match_only_on_schema_fields_and_grade_high_medium_and_low() {
    let schema = Schema::load();
    let mut levels = BTreeSet::new();
    for path in assets("rules") {
        let r = yaml(&path);
        let problems = rule_problems(&r, &schema);
        assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
        levels.insert(r["level"].as_str().unwrap().to_owned());
    }
    for l in ["high", "medium", "low"] {
        assert!(levels.contains(l), "no {l} rule among {levels:?}");
    }
}

/// The checks find what the engine would refuse: a rule on one of our own
/// fields (the example), a decoder writing outside the schema.
#[test]
fn the_checks_refuse_fields_outside_the_schema() {
    let schema = Schema::load();
    let rule: Value = serde_yaml_ng::from_str(
        "enabled: true\nstatus: experimental\nlevel: high\nmetadata: {title: t}\nlogsource: {product: wazuh-misp}\n\
         detection:\n  condition: selection and not other\n  selection:\n    misp_data.summary.max_threat_score|gte: 7\n",
    )
    .unwrap();
    let problems = rule_problems(&rule, &schema);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("misp_data.summary.max_threat_score")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("other")), "{problems:?}");
    let decoder: Value = serde_yaml_ng::from_str(
        "name: decoder/x/0\nenabled: true\nmetadata: {title: t}\nnormalize:\n  - map:\n      - threat.indicator.domain: $_tmp_json.value\n      - event.severity: high\n      - source.ip: $source.address.nope\n",
    )
    .unwrap();
    let problems = decoder_problems(&decoder, &schema);
    assert_eq!(problems.len(), 3, "{problems:#?}");
}
