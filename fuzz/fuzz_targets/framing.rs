//! Datagram framing: whatever the agent's id, name and address, the frame
//! parses back the way analysisd reads it. The input is an alert line (the
//! agent comes from it, as in the daemon) or, when it is not JSON, raw
//! NUL-separated id, name and address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wazuh_misp::enrich::{AgentContext, AlertContext};
use wazuh_misp::output::frame;

fuzz_target!(|data: &[u8]| {
    let mut parser = wazuh_misp::alert::Parser::default();
    let parsed = std::str::from_utf8(data).ok().and_then(|line| parser.parse(line).ok());
    let agent = match &parsed {
        Some(tape) => AlertContext::from_alert(tape.as_value()).agent,
        None => {
            let mut parts = data.split(|&b| b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
            AgentContext {
                id: parts.next().unwrap_or_default().into(),
                name: parts.next().unwrap_or_default().into(),
                ip: parts.next().map(Into::into),
            }
        }
    };
    let header = frame::header(&agent);
    let Some(d) = frame::frame(&header, data) else {
        assert!(header.len() + data.len() > frame::MAX_DATAGRAM);
        return;
    };
    assert!(d.len() <= frame::MAX_DATAGRAM);
    let (queue, location, msg) = frame::parse(&d).expect("our frames parse");
    assert_eq!(queue, '1');
    assert_eq!(msg, data);
    if agent.id.is_empty() || agent.id == "000" {
        assert_eq!(location, "misp");
    } else {
        let clean = |s: &str| s.replace(['\n', '\r'], " ");
        let ip = agent.ip.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "any".into());
        assert_eq!(location, format!("[{}] ({}) {}->misp", clean(&agent.id), clean(&agent.name), clean(&ip)));
    }
});
