//! Where HTTP/2 frames begin and end in a byte stream that arrives in pieces of any size: a
//! frame split across reads, or many frames in one. Only each frame's header and first payload
//! bytes are looked at; the rest is skipped without being read. Any bytes are accepted:
//! checking that they are valid HTTP/2 is h2's job, and garbage only makes frames of garbage.

/// Bytes of a frame's header (RFC 9113, 4.1).
const HEADER: usize = 9;
/// Payload bytes a frame is reported with: enough for a GOAWAY's last stream id and error code.
const PEEK: usize = 8;

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;

/// A frame's header, and the start of its payload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    /// Without the reserved bit.
    pub(crate) stream: u32,
    /// The payload's first bytes: all of it, when it is shorter than [`PEEK`].
    peek: [u8; PEEK],
    peeked: usize,
}

impl Frame {
    /// The error code of a GOAWAY.
    pub(crate) fn goaway_code(&self) -> Option<u32> {
        (self.kind == GOAWAY && self.peeked == PEEK).then(|| word(&self.peek[4..]))
    }
}

/// The frame being read: its header and peeked payload as far as they came, then how much of
/// its payload is left to skip.
#[derive(Default)]
pub(crate) struct Frames {
    head: [u8; HEADER + PEEK],
    /// Bytes of `head` filled.
    have: usize,
    /// Payload bytes after the peeked ones still to come.
    skip: usize,
}

impl Frames {
    /// Takes the next bytes of the stream and calls `seen` with each frame whose header and
    /// peeked payload they complete.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], mut seen: impl FnMut(&Frame)) {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                if self.skip > 0 {
                    return;
                }
            }
            if self.have == 0 && bytes.len() >= HEADER {
                // The usual case, a frame's start whole in these bytes, without copying it.
                let len = payload_len(bytes);
                let peeked = len.min(PEEK);
                if bytes.len() >= HEADER + peeked {
                    seen(&Frame::new(&bytes[..HEADER + peeked]));
                    let n = (HEADER + len).min(bytes.len());
                    self.skip = HEADER + len - n;
                    bytes = &bytes[n..];
                    continue;
                }
            }
            let wanted = self.wanted();
            let n = (wanted - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < HEADER {
                return;
            }
            // The header is complete, so the payload's length is known.
            let wanted = self.wanted();
            if self.have < wanted {
                if bytes.is_empty() {
                    return;
                }
                continue;
            }
            seen(&Frame::new(&self.head[..wanted]));
            self.skip = payload_len(&self.head) - (wanted - HEADER);
            self.have = 0;
        }
    }

    /// Between two frames: what is fed next starts a frame.
    pub(crate) fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }

    /// How many bytes of `head` the current frame fills: its header, then as much of its
    /// payload as is peeked.
    fn wanted(&self) -> usize {
        if self.have < HEADER {
            HEADER
        } else {
            HEADER + payload_len(&self.head).min(PEEK)
        }
    }
}

impl Frame {
    /// The frame whose header and peeked payload are `head`.
    fn new(head: &[u8]) -> Frame {
        let mut peek = [0; PEEK];
        for (to, from) in peek.iter_mut().zip(&head[HEADER..]) {
            *to = *from;
        }
        Frame {
            kind: head[3],
            flags: head[4],
            stream: word(&head[5..]) & 0x7fff_ffff,
            peek,
            peeked: head.len() - HEADER,
        }
    }
}

/// The payload length in a frame header, which `head` starts with.
fn payload_len(head: &[u8]) -> usize {
    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2])
}

/// A big-endian 32-bit word at the start of `bytes`, which holds at least four.
fn word(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// A frame's bytes, for the tests that write streams by hand.
#[cfg(test)]
pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few frames of every shape: empty, shorter than the peek, longer, large.
    fn stream() -> (Vec<u8>, Vec<(u8, u8, u32)>) {
        let mut goaway = 7u32.to_be_bytes().to_vec();
        goaway.extend(0xbu32.to_be_bytes());
        goaway.extend(b"debug data");
        let frames = [
            (SETTINGS, 0, 0, vec![0; 12]),
            (SETTINGS, 1, 0, vec![]),
            (PING, 0, 0, vec![1; 8]),
            (HEADERS, 5, 1, vec![0x82; 3]),
            (DATA, 1, 0x8000_0003, vec![b'x'; 70_000]),
            (GOAWAY, 0, 0, goaway),
        ];
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (kind, flags, stream, payload) in frames {
            bytes.extend(frame(kind, flags, stream, &payload));
            expected.push((kind, flags, stream & 0x7fff_ffff));
        }
        (bytes, expected)
    }

    fn scan(pieces: impl IntoIterator<Item = Vec<u8>>) -> (Vec<Frame>, bool) {
        let mut frames = Frames::default();
        let mut seen = Vec::new();
        for piece in pieces {
            frames.feed(&piece, |f| seen.push(*f));
        }
        (seen, frames.at_boundary())
    }

    #[test]
    fn frames_are_found_however_the_stream_is_cut() {
        let (bytes, expected) = stream();
        for size in [1, 2, 5, 9, 10, 17, 100, 4096, bytes.len()] {
            let (seen, boundary) = scan(bytes.chunks(size).map(<[u8]>::to_vec));
            let kinds: Vec<_> = seen.iter().map(|f| (f.kind, f.flags, f.stream)).collect();
            assert_eq!(kinds, expected, "in pieces of {size}");
            assert!(boundary, "in pieces of {size}");
            assert_eq!(seen.last().unwrap().goaway_code(), Some(0xb));
            assert_eq!(seen[0].goaway_code(), None);
        }
    }

    #[test]
    fn a_frame_cut_short_is_not_seen_and_not_at_a_boundary() {
        let (bytes, _) = stream();
        let first = frame(SETTINGS, 0, 0, &[0; 12]);
        for end in 1..first.len() {
            let (seen, boundary) = scan([bytes[..end].to_vec()]);
            // The header and the peeked payload are all it takes to be seen.
            assert_eq!(seen.len(), usize::from(end >= HEADER + PEEK), "after {end}");
            assert!(!boundary, "after {end}");
        }
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_make_the_scanner_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..10),
        ) {
            let mut at = cuts;
            at.push(0);
            at.push(bytes.len());
            at.sort_unstable();
            let pieces = at.windows(2).filter_map(|w| bytes.get(w[0]..w[1].min(bytes.len())));
            let mut whole = Frames::default();
            let mut in_pieces = Frames::default();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            whole.feed(&bytes, |f| a.push(*f));
            for piece in pieces {
                in_pieces.feed(piece, |f| b.push(*f));
            }
            proptest::prop_assert_eq!(a, b);
            proptest::prop_assert_eq!(whole.at_boundary(), in_pieces.at_boundary());
        }
    }
}
