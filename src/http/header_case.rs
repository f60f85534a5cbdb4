//! Response header names go out on HTTP/1 as the app wrote them. hyper keeps names lower-case
//! (as the `http` crate stores them) and can write them in Title-Case, but it offers no way to
//! give it the case of a response's own names. Most apps write Title-Case (`Content-Type`,
//! `Set-Cookie`), so hyper's Title-Case covers them at no cost beyond its writer; the few names
//! an app writes otherwise (`ETag`, `WWW-Authenticate`, `X-Request-ID`, `x-custom`) travel with
//! the response as [`OriginalCase`] and are put back into the head as it is written to the
//! socket. Only the case of letters changes, so the head keeps its length and every byte count
//! hyper keeps stays right. HTTP/2 requires lower-case names, so this is HTTP/1 only.

use bytes::Bytes;

/// The names of a response that differ from their Title-Case form, as the app wrote them, each
/// with how many fields of the same name came before it (hyper writes a name's fields in the
/// order given). A response extension, present only when there is at least one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginalCase(pub Vec<(Bytes, usize)>);

impl OriginalCase {
    /// Remembers `name` if hyper's Title-Case would write it otherwise; `earlier` counts the
    /// fields of that name already given.
    #[inline]
    pub fn note(case: &mut Option<OriginalCase>, name: &[u8], earlier: impl FnOnce() -> usize) {
        if !is_title_case(name) {
            case.get_or_insert_with(OriginalCase::default).0.push((Bytes::copy_from_slice(name), earlier()));
        }
    }
}

/// Whether hyper's Title-Case writer gives `name` back as it is: an upper-case letter first
/// and after each `-`, lower-case elsewhere.
#[inline]
pub fn is_title_case(name: &[u8]) -> bool {
    // Letters only: the case bit (0x20) must be clear at the start and after a `-`, set
    // elsewhere. Digits and `-` have it set either way and are skipped by the letter test.
    let mut after_dash = true;
    for &b in name {
        if b.is_ascii_alphabetic() && ((b & 0x20 == 0) != after_dash) {
            return false;
        }
        after_dash = b == b'-';
    }
    true
}

/// Writes each name in `case` over the same field (the same name ignoring case, as often
/// before) in the header lines of `head`. Only the bytes of names change.
pub fn restore(head: &mut [u8], case: &OriginalCase) {
    // How many fields of each of the names in `case` have gone by.
    let mut seen = vec![0usize; case.0.len()];
    // The first line is the status line; the head ends at the blank line.
    for line in head.split_mut(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else { break };
        let name = &mut line[..colon];
        let mut replacement = None;
        for (i, (original, earlier)) in case.0.iter().enumerate() {
            if original.eq_ignore_ascii_case(name) {
                if seen[i] == *earlier {
                    replacement = Some(original);
                }
                seen[i] += 1;
            }
        }
        if let Some(original) = replacement {
            name.copy_from_slice(original);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_case_is_what_hyper_writes() {
        for name in ["Content-Type", "Set-Cookie", "X-Frame-Options", "Vary", "A", "X-1"] {
            assert!(is_title_case(name.as_bytes()), "{name}");
        }
        for name in ["ETag", "WWW-Authenticate", "X-Request-ID", "content-type", "x", "Content-type", "X--a"] {
            assert!(!is_title_case(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn names_are_restored_in_place() {
        let mut case = None;
        let names = ["Content-Type", "ETag", "x-custom", "Set-Cookie", "set-cookie"];
        for (i, name) in names.iter().enumerate() {
            let earlier = names[..i].iter().filter(|n| n.eq_ignore_ascii_case(name)).count();
            OriginalCase::note(&mut case, name.as_bytes(), || earlier);
        }
        let case = case.unwrap();
        let noted: Vec<_> = case.0.iter().map(|(name, earlier)| (&name[..], *earlier)).collect();
        assert_eq!(noted, [(&b"ETag"[..], 0), (b"x-custom", 0), (b"set-cookie", 1)]);
        let written = "HTTP/1.1 200 OK\r\nContent-Type: a\r\nEtag: \"1\"\r\nX-Custom: b\r\nSet-Cookie: c\r\nSet-Cookie: d\r\nContent-Length: 0\r\n\r\n";
        let mut head = written.as_bytes().to_vec();
        restore(&mut head, &case);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: a\r\nETag: \"1\"\r\nx-custom: b\r\nSet-Cookie: c\r\nset-cookie: d\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_value_that_looks_like_a_name_is_left_alone() {
        let case = OriginalCase(vec![(Bytes::from_static(b"ETag"), 0)]);
        let mut head = b"HTTP/1.1 200 OK\r\nX-Note: etag: 1\r\n\r\netag: body".to_vec();
        let before = head.clone();
        restore(&mut head, &case);
        assert_eq!(head, before);
    }
}
