//! Writing a text line whose length is bounded before it is written: room for the whole line
//! is reserved once, and short pieces of known size are copied as fixed-size blocks. An
//! access-log line is a dozen small pieces; with `Vec::extend_from_slice` each one costs a
//! capacity check and a call to `memcpy`, which was most of what the line cost.

use std::fmt;
use std::mem::MaybeUninit;

use super::log::decimal_digits;

/// Text of at most [`Short::ROOM`] bytes, kept zero-padded to that size so that it is copied
/// as one block.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Short {
    bytes: [u8; Short::ROOM],
    len: u8,
}

impl Short {
    /// What writing a `Short` takes from the room reserved for a line.
    pub const ROOM: usize = 16;

    pub const EMPTY: Short = Short { bytes: [0; Short::ROOM], len: 0 };

    /// `text` as a `Short`, if it fits.
    pub const fn new(text: &[u8]) -> Option<Short> {
        if text.len() > Short::ROOM {
            return None;
        }
        let mut bytes = [0; Short::ROOM];
        let mut i = 0;
        while i < text.len() {
            bytes[i] = text[i];
            i += 1;
        }
        Some(Short { bytes, len: text.len() as u8 })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Debug for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

/// Appends one line to `out`, written by `write` in `room` bytes reserved up front (counting
/// each block copy at its full size). A piece that would overrun the room panics (a bound
/// computed wrong), never writes out of bounds, and leaves `out` as it was.
pub fn write_line(out: &mut Vec<u8>, room: usize, write: impl FnOnce(&mut LineWriter<'_>)) {
    out.reserve(room);
    let len = out.len();
    let mut line = LineWriter { spare: &mut out.spare_capacity_mut()[..room], at: 0 };
    write(&mut line);
    let len = len + line.at;
    // SAFETY: every write starts at `at` and covers at least the bytes it advances `at` past,
    // so the first `at` bytes of the spare capacity are initialised.
    unsafe { out.set_len(len) };
}

/// The writer of one line: the reserved room as a plain slice, so that its address and length
/// stay in registers between pieces.
pub struct LineWriter<'a> {
    spare: &'a mut [MaybeUninit<u8>],
    /// Bytes written so far. Every byte before this offset has been written; block copies may
    /// have written some after it too.
    at: usize,
}

impl LineWriter<'_> {
    #[inline]
    fn spare(&mut self, n: usize) -> &mut [MaybeUninit<u8>] {
        &mut self.spare[self.at..self.at + n]
    }

    #[inline]
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.spare(bytes.len()).write_copy_of_slice(bytes);
        self.at += bytes.len();
    }

    #[inline]
    pub fn byte(&mut self, byte: u8) {
        self.spare(1)[0].write(byte);
        self.at += 1;
    }

    /// Writes the first `len` bytes of `block` by copying all of it.
    #[inline]
    pub fn block<const N: usize>(&mut self, block: &[u8; N], len: usize) {
        self.spare(N).write_copy_of_slice(block);
        self.at += len.min(N);
    }

    /// What [`LineWriter::method`] takes from the room, besides the method's length.
    pub const METHOD_ROOM: usize = Short::ROOM;

    /// A request method; the standard ones are copied as blocks.
    #[inline]
    pub fn method(&mut self, method: &http::Method) {
        const GET: Short = Short::new(b"GET").unwrap();
        const POST: Short = Short::new(b"POST").unwrap();
        const HEAD: Short = Short::new(b"HEAD").unwrap();
        // The standard methods' text is static: telling them apart by it costs a compare or two.
        match method.as_str() {
            "GET" => self.short(&GET),
            "POST" => self.short(&POST),
            "HEAD" => self.short(&HEAD),
            other => self.bytes(other.as_bytes()),
        }
    }

    /// What [`LineWriter::decimal`] takes from the room: a `u64` at its longest.
    pub const DECIMAL_ROOM: usize = 20;

    /// `n` in decimal.
    #[inline]
    pub fn decimal(&mut self, n: u64) {
        let mut digits = [0u8; Self::DECIMAL_ROOM];
        let len = decimal_digits(n, &mut digits);
        self.block(&digits, len);
    }

    #[inline]
    pub fn short(&mut self, text: &Short) {
        self.spare(Short::ROOM).write_copy_of_slice(&text.bytes);
        // A `Short` is never longer than its block (see `Short::new`).
        self.at += text.len as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_land_in_order_without_their_padding() {
        let mut out = b"before\n".to_vec();
        write_line(&mut out, 64, |line| {
            line.short(&Short::new(b"ab").unwrap());
            line.byte(b' ');
            line.block(b"xyz\0\0\0", 3);
            line.bytes(b"-tail");
        });
        assert_eq!(out, b"before\nab xyz-tail");
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 9, 10, 99, 100, 200, 65_535, 10u64.pow(19) - 1, 10u64.pow(19), u64::MAX] {
            let mut out = Vec::new();
            write_line(&mut out, 20, |line| line.decimal(n));
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn methods_standard_or_not() {
        for method in ["GET", "POST", "HEAD", "PUT", "DELETE", "PROPFIND", "X-A-VERY-LONG-EXTENSION-METHOD"] {
            let method = http::Method::from_bytes(method.as_bytes()).unwrap();
            let mut out = Vec::new();
            write_line(&mut out, method.as_str().len() + LineWriter::METHOD_ROOM, |line| line.method(&method));
            assert_eq!(out, method.as_str().as_bytes());
        }
    }

    #[test]
    fn short_text_only() {
        assert!(Short::new(&[b'a'; 16]).is_some());
        assert!(Short::new(&[b'a'; 17]).is_none());
    }

    #[test]
    fn a_line_that_outgrows_its_room_panics_and_leaves_the_buffer_alone() {
        let mut out = b"kept".to_vec();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_line(&mut out, 20, |line| {
                line.bytes(b"0123456789");
                line.short(&Short::new(b"x").unwrap());
            })
        }));
        assert!(result.is_err());
        assert_eq!(out, b"kept");
    }
}
