//! Datagram framing, exactly as analysisd 4.x parses its queue socket:
//! `<queue>:<location>:<message>`.
//!
//! For an agent the location is `[<id>] (<name>) <ip>->misp`, which makes
//! analysisd attribute the event to that agent; `|` and `:` inside the
//! location are escaped as `||` and `|:` (agent IPs can be IPv6, names can
//! hold anything). For the manager (agent `000`, or no agent) the location
//! is just `misp`.

use crate::enrich::AgentContext;

/// analysisd reads at most OS_MAXSTR - 1 bytes of a datagram and silently
/// keeps the truncated rest, so nothing we send may be longer.
pub const MAX_DATAGRAM: usize = 65535;

/// `1` is LOCALFILE_MQ, the queue integrations write to.
const QUEUE_ID: &str = "1";

/// The prefix of events about the manager itself (agent `000`, no agent,
/// and the integration's own error events).
pub const MANAGER_HEADER: &str = "1:misp:";

/// The `1:<location>:` prefix for events about this agent.
pub fn header(agent: &AgentContext<'_>) -> String {
    if agent.id.is_empty() || agent.id == "000" {
        return MANAGER_HEADER.to_owned();
    }
    let ip = agent
        .ip
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("any");
    let location = format!("[{}] ({}) {}->misp", agent.id, agent.name, ip);
    let mut out = String::with_capacity(location.len() + 8);
    out.push_str(QUEUE_ID);
    out.push(':');
    for c in location.chars() {
        match c {
            '|' => out.push_str("||"),
            ':' => out.push_str("|:"),
            // A newline would end the event early in analysisd's logs.
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push(':');
    out
}

/// Header plus payload; `None` when the result would exceed [`MAX_DATAGRAM`].
/// One datagram of [`Datagrams`], which holds the size rule.
pub fn frame(header: &str, payload: &[u8]) -> Option<Vec<u8>> {
    let mut one = Datagrams::default();
    one.push(header, payload).then_some(one.bytes)
}

/// Framed datagrams back to back in one buffer: a batch of events costs one
/// growing allocation instead of one per event.
#[derive(Debug, Default)]
pub struct Datagrams {
    bytes: Vec<u8>,
    spans: Vec<Span>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    payload: usize,
    end: usize,
}

impl Datagrams {
    /// Appends `header` and what `write_payload` writes after it. The
    /// datagram is kept only if `write_payload` returns true and the whole
    /// fits [`MAX_DATAGRAM`]; otherwise nothing is left behind.
    pub fn push_with(
        &mut self,
        header: &str,
        write_payload: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> bool {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(header.as_bytes());
        let payload = self.bytes.len();
        if write_payload(&mut self.bytes) && self.bytes.len() - start <= MAX_DATAGRAM {
            let end = self.bytes.len();
            self.spans.push(Span {
                start,
                payload,
                end,
            });
            true
        } else {
            self.bytes.truncate(start);
            false
        }
    }

    /// [`frame`] into the buffer; false when too long.
    pub fn push(&mut self, header: &str, payload: &[u8]) -> bool {
        self.push_with(header, |out| {
            out.extend_from_slice(payload);
            true
        })
    }

    /// Empties the buffer, keeping its allocation for the next batch.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    /// Room for `bytes` more bytes of datagrams.
    pub fn reserve(&mut self, bytes: usize) {
        self.bytes.reserve(bytes);
    }

    /// Bytes held, all datagrams together.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    /// Whole datagrams, header included, in the order pushed.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|s| &self.bytes[s.start..s.end])
    }

    /// The events alone, without their `1:<location>:` header.
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|s| &self.bytes[s.payload..s.end])
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// Splits a datagram the way analysisd does, undoing the location escapes.
/// Returns `(queue, location, message)`. Used by tests, the demo and fuzzing
/// to check that what we send parses back.
pub fn parse(datagram: &[u8]) -> Option<(char, String, &[u8])> {
    let s = datagram;
    let queue = *s.first()? as char;
    if s.get(1) != Some(&b':') {
        return None;
    }
    let mut loc = Vec::new();
    let mut i = 2;
    while i < s.len() {
        match s[i] {
            b'|' if matches!(s.get(i + 1), Some(b'|') | Some(b':')) => {
                loc.push(s[i + 1]);
                i += 2;
            }
            b':' => {
                return Some((queue, String::from_utf8(loc).ok()?, &s[i + 1..]));
            }
            c => {
                loc.push(c);
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent<'a>(id: &'a str, name: &'a str, ip: Option<&'a str>) -> AgentContext<'a> {
        AgentContext {
            id: id.into(),
            name: name.into(),
            ip: ip.map(Into::into),
        }
    }

    #[test]
    fn manager_and_agents() {
        assert!(MANAGER_HEADER.starts_with(QUEUE_ID));
        assert_eq!(header(&agent("000", "wazuh-manager", None)), "1:misp:");
        assert_eq!(header(&agent("", "", None)), "1:misp:");
        assert_eq!(
            header(&agent("001", "web01", Some("10.0.1.50"))),
            "1:[001] (web01) 10.0.1.50->misp:"
        );
        assert_eq!(header(&agent("002", "db", None)), "1:[002] (db) any->misp:");
        assert_eq!(
            header(&agent("003", "a|b:c", Some("2001:db8::1"))),
            "1:[003] (a||b|:c) 2001|:db8|:|:1->misp:"
        );
    }

    #[test]
    fn round_trip_and_size_guard() {
        let h = header(&agent("003", "a|b:c", Some("2001:db8::1")));
        let d = frame(&h, br#"{"integration":"misp"}"#).unwrap();
        let (q, loc, msg) = parse(&d).unwrap();
        assert_eq!(q, '1');
        assert_eq!(loc, "[003] (a|b:c) 2001:db8::1->misp");
        assert_eq!(msg, br#"{"integration":"misp"}"#);
        let big = vec![b'x'; MAX_DATAGRAM - h.len()];
        assert_eq!(frame(&h, &big).unwrap().len(), MAX_DATAGRAM);
        let too_big = vec![b'x'; MAX_DATAGRAM - h.len() + 1];
        assert!(frame(&h, &too_big).is_none());

        // The batched form frames the same bytes and refuses the same sizes.
        let mut many = Datagrams::default();
        assert!(many.push(&h, br#"{"integration":"misp"}"#));
        assert!(!many.push(&h, &too_big));
        assert!(!many.push_with(MANAGER_HEADER, |out| {
            out.extend_from_slice(b"half written");
            false
        }));
        assert!(many.push(MANAGER_HEADER, &big[..10]));
        assert!(many.push(&h, &big));
        assert_eq!(many.len(), 3);
        let all: Vec<&[u8]> = many.iter().collect();
        assert_eq!(all[0], &d[..]);
        assert_eq!(all[1], [MANAGER_HEADER.as_bytes(), &big[..10]].concat());
        assert_eq!(all[2].len(), MAX_DATAGRAM);
        let payloads: Vec<&[u8]> = many.payloads().collect();
        assert_eq!(payloads[1], &big[..10]);
    }
}
