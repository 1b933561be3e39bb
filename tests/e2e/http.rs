//! A small HTTP/1.1 client over a plain socket, so tests see exactly what came on the wire:
//! status line, headers, body framing, and whether the server closed the connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::support::PATIENCE;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the server said it will close the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// How a request failed, in the terms a lost-request count needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made: the server was not accepting (before the drain or
    /// after the listener closed). Nothing was sent.
    Refused,
    /// The connection was closed before a single byte of the response came back.
    Empty,
    /// The connection was reset before a response came.
    Reset,
    /// Part of a response came, then the connection ended.
    Truncated,
    /// No answer within the test's patience.
    Timeout,
    /// Bytes came that are not an HTTP response.
    Malformed,
}

impl Failure {
    fn of(e: &io::Error, got_bytes: bool) -> Failure {
        use io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused => Failure::Refused,
            WouldBlock | TimedOut => Failure::Timeout,
            _ if got_bytes => Failure::Truncated,
            ConnectionReset | ConnectionAborted | BrokenPipe => Failure::Reset,
            UnexpectedEof => Failure::Empty,
            InvalidData => Failure::Malformed,
            _ => Failure::Reset,
        }
    }
}

/// One client connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Result<Conn, Failure> {
        let stream =
            TcpStream::connect_timeout(&addr, PATIENCE).map_err(|e| Failure::of(&e, false))?;
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// How long a read waits before it fails with [`Failure::Timeout`]; [`PATIENCE`] at first.
    pub fn read_timeout(&self, timeout: std::time::Duration) {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
    }

    /// The connection's socket, for writing from another thread.
    pub fn writer(&self) -> TcpStream {
        self.reader.get_ref().try_clone().unwrap()
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.reader
            .get_mut()
            .write_all(bytes)
            .map_err(|e| Failure::of(&e, false))
    }

    /// Sends a GET for `path` on this keep-alive connection and reads the response.
    pub fn get(&mut self, path: &str) -> Result<Response, Failure> {
        self.request("GET", path, &[])
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, Failure> {
        self.request_streaming(method, path, headers, |_| {})
    }

    /// Like [`Conn::request`], handing each chunk of a chunked body to `each` as it comes, so
    /// that a test sees a stream's progress before it ends.
    pub fn request_streaming(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        mut each: impl FnMut(&[u8]),
    ) -> Result<Response, Failure> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.send(req.as_bytes())?;
        let mut got_bytes = false;
        self.read_inner(method == "HEAD", &mut got_bytes, &mut each)
            .map_err(|e| Failure::of(&e, got_bytes))
    }

    /// Reads one response; `head` for a response to HEAD, which has no body.
    pub fn read_response(&mut self, head: bool) -> Result<Response, Failure> {
        let mut got_bytes = false;
        self.read_inner(head, &mut got_bytes, &mut |_| {})
            .map_err(|e| Failure::of(&e, got_bytes))
    }

    fn read_inner(
        &mut self,
        head: bool,
        got_bytes: &mut bool,
        each_chunk: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Response> {
        let status_line = self.line()?;
        *got_bytes = true;
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, status_line.clone()))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(response);
        }
        if response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size_line = self.line()?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, size_line.clone())
                })?;
                if size == 0 {
                    // Trailers, then the blank line.
                    while !self.line()?.is_empty() {}
                    break;
                }
                let start = response.body.len();
                response.body.resize(start + size, 0);
                self.reader.read_exact(&mut response.body[start..])?;
                each_chunk(&response.body[start..]);
                self.line()?;
            }
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?;
            response.body.resize(len, 0);
            self.reader.read_exact(&mut response.body)?;
        } else {
            self.reader.read_to_end(&mut response.body)?;
        }
        Ok(response)
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !line.ends_with('\n') {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Whether the server closes this connection (EOF or reset) within `timeout`, without
    /// sending anything more.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
        let mut byte = [0u8; 1];
        let closed = match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        self.reader
            .get_ref()
            .set_read_timeout(Some(PATIENCE))
            .unwrap();
        closed
    }
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    try_get(addr, path).unwrap_or_else(|f| panic!("GET {path} failed: {f:?}"))
}

pub fn try_get(addr: SocketAddr, path: &str) -> Result<Response, Failure> {
    Conn::connect(addr)?.request("GET", path, &[("Connection", "close")])
}
