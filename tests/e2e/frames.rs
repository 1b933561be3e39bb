//! HTTP/2 frames written and read byte for byte on a raw socket, for the tests that send what
//! no well-behaved client would: floods, resets, stalled windows, header blocks that never end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::support::PATIENCE;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;
/// SETTINGS_MAX_CONCURRENT_STREAMS.
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// SETTINGS_INITIAL_WINDOW_SIZE.
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
/// Error codes: CANCEL, REFUSED_STREAM, ENHANCE_YOUR_CALM.
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// A connection that has sent the preface and an empty SETTINGS frame.
pub fn connect(addr: SocketAddr) -> TcpStream {
    connect_with(addr, &[])
}

/// A connection that has sent the preface and a SETTINGS frame with `settings`.
pub fn connect_with(addr: SocketAddr, settings: &[(u16, u32)]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let payload: Vec<u8> = settings
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect();
    write(&mut tcp, SETTINGS, 0, 0, &payload);
    tcp
}

pub fn write(tcp: &mut TcpStream, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    try_write(tcp, kind, flags, stream, payload).unwrap();
}

/// Like [`write`], for a server that may close the connection meanwhile.
pub fn try_write(
    tcp: &mut TcpStream,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    tcp.write_all(&encode(kind, flags, stream, payload))
}

/// A frame's bytes, for writing several at once.
pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// The next frame, or `None` once the server closed the connection.
pub fn read(tcp: &mut TcpStream) -> Option<Frame> {
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

impl Frame {
    /// A GOAWAY's last stream id and error code.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        let word = |at: usize| {
            let bytes = self.payload.get(at..at + 4)?;
            Some(u32::from_be_bytes(bytes.try_into().ok()?))
        };
        (self.kind == GOAWAY).then_some((word(0)? & 0x7fff_ffff, word(4)?))
    }
}

/// An HPACK integer with an `n`-bit prefix whose other bits are `first`.
fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn string(out: &mut Vec<u8>, text: &str) {
    integer(out, 0, 7, text.len());
    out.extend(text.as_bytes());
}

/// `GET path` for authority `test`: HPACK with the static table and literals only, so no
/// state is shared between blocks.
pub fn get(path: &str) -> Vec<u8> {
    request(0x82, path)
}

/// `POST path` for authority `test`, as [`get`].
pub fn post(path: &str) -> Vec<u8> {
    request(0x83, path)
}

/// A request header block; `method` is the static table entry of `:method` (2 GET, 3 POST).
fn request(method: u8, path: &str) -> Vec<u8> {
    // :method, and :scheme http (static table entry 6).
    let mut block = vec![method, 0x86];
    // :path and :authority, literal values without indexing, names from the table.
    integer(&mut block, 0, 4, 4);
    string(&mut block, path);
    integer(&mut block, 0, 4, 1);
    string(&mut block, "test");
    block
}

/// A header field `name: value` as a literal without indexing.
pub fn field(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0];
    string(&mut out, name);
    string(&mut out, value);
    out
}
