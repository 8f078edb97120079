//! Wazuh 5's ingestion format, pure: the body of `POST /events/enriched`
//! on `queue/sockets/queue-http.sock`, as the engine's
//! `api/event/ndJsonParser.hpp` reads it.
//!
//! A batch is one line `H <header JSON>`, merged by the engine into every
//! event of the batch (so a batch carries one agent's events), then one
//! line `E <event>` per event, the event being 4.x's `queue:location:message`
//! (`base/src/eventParser.cpp`: the location ends at the first `:` not
//! preceded by `|`, and only `|:` is unescaped). A newline inside an event
//! is followed by one space, which the engine strips, so that no event
//! line can look like the start of the next. `docs/ref/.../event-protocol.md`
//! describes another socket, content type and separator; the code is
//! what the engine runs, so this follows the code.

use super::frame;

/// The engine's header: `{"wazuh":{"agent":{"id":"001","name":"web-01"}}}`.
/// The id must be a string of digits (a number is refused).
pub fn header(agent_id: &str, agent_name: Option<&str>) -> String {
    let mut agent = serde_json::json!({ "id": agent_id });
    if let Some(name) = agent_name.filter(|n| !n.is_empty()) {
        agent["name"] = name.into();
    }
    serde_json::json!({ "wazuh": { "agent": agent } }).to_string()
}

/// One event of ours as the engine wants it, from the 4.x datagram it was
/// framed as: the agent's id and name (from our location,
/// `[001] (web-01) 10.0.1.50->misp`, or `misp` for the manager: `000`) and
/// the event line with the location escaped the engine's way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub agent_id: String,
    pub agent_name: Option<String>,
    /// `1:<location>:<message>`, without the `E ` and the indentation.
    pub line: Vec<u8>,
}

impl Event {
    /// `None` for a datagram that is not ours (no location separator).
    pub fn of_datagram(datagram: &[u8]) -> Option<Event> {
        let (queue, location, message) = frame::parse(datagram)?;
        let (agent_id, agent_name) = agent_of(&location);
        let mut line = Vec::with_capacity(datagram.len() + 8);
        line.push(queue as u8);
        line.push(b':');
        for c in location.bytes() {
            if c == b':' {
                line.extend_from_slice(b"|:");
            } else {
                line.push(c);
            }
        }
        line.push(b':');
        line.extend_from_slice(message);
        Some(Event {
            agent_id,
            agent_name,
            line,
        })
    }
}

/// `[001] (web-01) 10.0.1.50->misp` → ("001", "web-01"); anything else is
/// the manager's.
fn agent_of(location: &str) -> (String, Option<String>) {
    let parsed = location.strip_prefix('[').and_then(|rest| {
        let (id, rest) = rest.split_once("] (")?;
        let name = rest.rsplit_once(") ").map(|(n, _)| n)?;
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            .then(|| (id.to_owned(), Some(name.to_owned())))
    });
    parsed.unwrap_or_else(|| ("000".to_owned(), None))
}

/// Appends `E <line>\n` to `body`, a newline inside the line followed by
/// the one space the engine strips. Trailing newlines are dropped, as the
/// engine drops them.
pub fn push_event(body: &mut Vec<u8>, line: &[u8]) {
    let end = line.iter().rposition(|&b| b != b'\n').map_or(0, |i| i + 1);
    let line = &line[..end];
    body.extend_from_slice(b"E ");
    for &b in line {
        body.push(b);
        if b == b'\n' {
            body.push(b' ');
        }
    }
    body.push(b'\n');
}

/// A whole batch: the header line, then each event.
pub fn batch<'a>(header: &str, lines: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = Vec::with_capacity(4096);
    body.extend_from_slice(b"H ");
    body.extend_from_slice(header.as_bytes());
    body.push(b'\n');
    for l in lines {
        push_event(&mut body, l);
    }
    body
}

/// The engine's parser, for tests and the stand-in for its ingestion: the
/// header JSON and each event, unindented. Errors are the engine's 400s.
pub fn parse_batch(body: &[u8]) -> Result<(String, Vec<Vec<u8>>), String> {
    let first = memchr::memchr(b'\n', body).ok_or("Missing newline after header")?;
    let header_line = &body[..first];
    if header_line.len() < 2 || &header_line[..2] != b"H " {
        return Err("Invalid header format, expected 'H {json}'".into());
    }
    let header = std::str::from_utf8(&header_line[2..])
        .map_err(|_| "header is not UTF-8")?
        .to_owned();
    let v: serde_json::Value =
        serde_json::from_str(&header).map_err(|e| format!("header is not JSON: {e}"))?;
    match v.pointer("/wazuh/agent/id").and_then(|i| i.as_str()) {
        Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => {}
        Some(_) => {
            return Err("/wazuh/agent/id must be a non-empty positive numeric string".into())
        }
        None => return Err("missing or non-string /wazuh/agent/id in header".into()),
    }
    let mut events = Vec::new();
    let mut pos = first + 1;
    let finder = memchr::memmem::Finder::new(b"\nE ");
    while pos < body.len() {
        while pos < body.len() && body[pos] == b'\n' {
            pos += 1;
        }
        if pos >= body.len() {
            break;
        }
        if pos + 1 >= body.len() || body[pos] != b'E' || body[pos + 1] != b' ' {
            return Err("Expected 'E ' at event start".into());
        }
        let start = pos + 2;
        let next = finder.find(&body[start..]).map(|i| start + i);
        let mut end = next.unwrap_or(body.len());
        while end > start && body[end - 1] == b'\n' {
            end -= 1;
        }
        events.push(unindent(&body[start..end]));
        pos = next.map_or(body.len(), |n| n + 1);
    }
    Ok((header, events))
}

fn unindent(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        out.push(raw[i]);
        if raw[i] == b'\n' && raw.get(i + 1) == Some(&b' ') {
            i += 1;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn our_datagrams_become_the_engines_events_with_their_agent() {
        let e = Event::of_datagram(b"1:[001] (web-01) 10.0.1.50->misp:{\"a\":1}").unwrap();
        assert_eq!(e.agent_id, "001");
        assert_eq!(e.agent_name.as_deref(), Some("web-01"));
        assert_eq!(e.line, b"1:[001] (web-01) 10.0.1.50->misp:{\"a\":1}");
        // 4.x escapes `:` and `|`; the engine unescapes only `|:`.
        let e = Event::of_datagram(b"1:[002] (proxy||edge|:1) 2001|:db8|:|:5->misp:{}").unwrap();
        assert_eq!(e.agent_name.as_deref(), Some("proxy|edge:1"));
        assert_eq!(e.line, b"1:[002] (proxy|edge|:1) 2001|:db8|:|:5->misp:{}");
        let m = Event::of_datagram(b"1:misp:{\"integration\":\"misp\"}").unwrap();
        assert_eq!((m.agent_id.as_str(), m.agent_name), ("000", None));
        assert!(Event::of_datagram(b"no separator").is_none());
    }

    #[test]
    fn a_batch_parses_back_as_the_engine_reads_it() {
        let h = header("001", Some("web-01"));
        assert_eq!(h, r#"{"wazuh":{"agent":{"id":"001","name":"web-01"}}}"#);
        let lines: [&[u8]; 3] = [
            b"1:loc:{\"a\":1}",
            b"1:loc:two\nlines\nE not an event",
            b"1:loc:\n",
        ];
        let body = batch(&h, lines);
        let (header, events) = parse_batch(&body).unwrap();
        assert_eq!(header, h);
        assert_eq!(
            events,
            [
                &b"1:loc:{\"a\":1}"[..],
                b"1:loc:two\nlines\nE not an event",
                b"1:loc:"
            ]
        );
        assert!(
            parse_batch(b"H {\"wazuh\":{\"agent\":{\"id\":1}}}\nE x\n").is_err(),
            "a number is refused"
        );
        assert!(parse_batch(b"E x\n").is_err());
        assert!(parse_batch(b"H {\"wazuh\":{\"agent\":{\"id\":\"1\"}}}\nX x\n").is_err());
    }

    proptest! {
        #[test]
        fn any_event_text_survives_the_framing(events in proptest::collection::vec("[ -~\n]{0,40}", 1..8)) {
            let lines: Vec<Vec<u8>> = events.iter().map(|e| format!("1:loc:x{e}").trim_end_matches('\n').as_bytes().to_vec()).collect();
            let body = batch(&header("7", None), lines.iter().map(Vec::as_slice));
            let (_, parsed) = parse_batch(&body).unwrap();
            prop_assert_eq!(parsed, lines);
        }
    }
}
