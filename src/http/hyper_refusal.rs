//! hyper answers a request head it cannot parse (400, 414, 431) by itself, with an empty body
//! and none of coldbrew's headers, before any service runs. This module recognises that answer
//! as it is written to the socket and puts coldbrew's own in its place: the same short text
//! body saying what was wrong, and the same headers, as every other refusal.

use http::StatusCode;

/// What hyper writes for a malformed head, up to its status code: `HTTP/1.1 400 Bad Request`.
const PREFIX: &[u8] = b"HTTP/1.1 4";

/// The answer that replaces `written`, if `written` is exactly hyper's own answer to a head it
/// could not parse: a status line of 400, 414 or 431, no `Server` field (every response a
/// service produces has one), `content-length: 0`, and nothing after the head. hyper's `Date`
/// field is kept. `reason` says what was wrong when coldbrew's raw-head check made hyper
/// refuse the head.
pub(super) fn replacement(written: &[u8], reason: Option<&str>) -> Option<(StatusCode, Vec<u8>)> {
    if !written.starts_with(PREFIX) || !written.ends_with(b"\r\n\r\n") {
        return None;
    }
    let status = match &written[PREFIX.len() - 1..PREFIX.len() + 2] {
        b"400" => StatusCode::BAD_REQUEST,
        b"414" => StatusCode::URI_TOO_LONG,
        b"431" => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let mut date = None;
    let mut empty = false;
    // The fields, without the status line and the blank line that ends the head.
    let fields = &written[..written.len() - 2];
    for line in fields.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"server") {
            return None;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            empty = value == b"0";
        } else if name.eq_ignore_ascii_case(b"date") {
            date = Some(value);
        }
    }
    if !empty {
        return None;
    }
    Some((status, answer(status, reason.unwrap_or_else(|| default_reason(status)), date)))
}

/// Why hyper refused the head, as far as its status says.
fn default_reason(status: StatusCode) -> &'static str {
    match status {
        StatusCode::URI_TOO_LONG => "the request target is too long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "the request head has too many or too large header fields",
        _ => "the request head is malformed",
    }
}

/// A complete HTTP/1.1 refusal that closes the connection, as coldbrew's own refusals are
/// sent: `Status text: reason` as a plain-text body.
pub(super) fn answer(status: StatusCode, reason: &str, date: Option<&[u8]>) -> Vec<u8> {
    let text = format!("{}: {reason}\n", status.canonical_reason().unwrap_or("Error"));
    let mut out = Vec::with_capacity(192 + text.len());
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or("")).as_bytes());
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nServer: coldbrew\r\n");
    out.extend_from_slice(format!("Content-Length: {}\r\n", text.len()).as_bytes());
    if let Some(date) = date {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 15:46:07 GMT\r\n\r\n";

    #[test]
    fn hypers_own_answers_are_replaced_with_a_body_and_coldbrews_headers() {
        let (status, answer) = replacement(HYPER_400, None).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let text = String::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "Bad Request: the request head is malformed\n");
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains("\r\nServer: coldbrew\r\n"));
        assert!(head.contains("\r\nConnection: close\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(head.contains("\r\nDate: Wed, 02 Dec 2026 15:46:07 GMT"));
        for (code, status) in [("414 URI Too Long", StatusCode::URI_TOO_LONG), ("431 Request Header Fields Too Large", StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)] {
            let written = format!("HTTP/1.1 {code}\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n");
            assert_eq!(replacement(written.as_bytes(), None).unwrap().0, status);
        }
    }

    #[test]
    fn responses_of_the_app_and_of_coldbrew_are_left_alone() {
        // A service's response always has a Server field.
        let app = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nserver: coldbrew\r\ndate: x\r\n\r\n";
        assert_eq!(replacement(app, None), None);
        // A body follows, or is announced.
        assert_eq!(replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\n", None), None);
        let mut with_body = HYPER_400.to_vec();
        with_body.extend_from_slice(b"abc");
        assert_eq!(replacement(&with_body, None), None);
        // Other statuses, body bytes that merely look like a status line.
        assert_eq!(replacement(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", None), None);
        assert_eq!(replacement(b"HTTP/1.1 4", None), None);
        assert_eq!(replacement(b"hello", None), None);
    }
}
