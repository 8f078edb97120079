//! `wazuh-misp enrich [FILE|-]`: alert lines in, one enriched event per
//! JSON line out, through the same engine as the daemon (no dedup, no
//! bookmark). For trying a configuration on real alerts, and for scripts.

use crate::config::Config;
use crate::lookup::{Lookup, MispClient};
use crate::runtime::{Engine, Rules};
use crate::stats::Stats;
use std::io::{self, BufRead, Write};
use std::sync::Arc;

/// Why `run` stopped early.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("cannot read the input: {0}")]
    Read(io::Error),
    #[error("cannot write the output: {0}")]
    Write(io::Error),
}

/// Enriches every line of `input` into `output`. Returns the number of
/// events written. A closed output (`wazuh-misp enrich … | head`) ends the
/// run at once with `Ok`: nobody reads what more MISP lookups would bring.
pub async fn run(
    cfg: &Config,
    client: MispClient,
    input: impl BufRead,
    mut output: impl Write,
) -> anyhow::Result<u64> {
    let stats = Arc::new(Stats::default());
    let engine = Engine::new(
        Rules::from_config(cfg)?,
        Lookup::start(client, &cfg.misp, stats.clone()),
        None,
        stats,
    );
    let mut offset = 0u64;
    let mut written = 0u64;
    for line in input.split(b'\n') {
        let line = line.map_err(EnrichError::Read)?;
        let at = offset;
        offset += line.len() as u64 + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(produced) = engine.process(&line, Some(at)).await else {
            continue;
        };
        for payload in produced.datagrams.payloads() {
            let wrote = output
                .write_all(payload)
                .and_then(|()| output.write_all(b"\n"))
                .and_then(|()| output.flush());
            match wrote {
                Ok(()) => written += 1,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(written),
                Err(e) => return Err(EnrichError::Write(e).into()),
            }
        }
    }
    Ok(written)
}
