//! HTTP/1.1 request framing (RFC 9112), pure: where each request head ends, whether it
//! breaks a limit, and how long its body is, so the connection guard knows which bytes are
//! a head it must check and which are a body it passes on.

use crate::error::NodeError;

/// Longest request target (path and query) the API takes; longer is `414 uri_too_long`.
pub const URI_MAX_BYTES: usize = 8 * 1024;
/// Most bytes of request headers (names and values, four bytes more each) the API takes;
/// more is `431 headers_too_large`.
pub const HEADERS_MAX_BYTES: usize = 16 * 1024;
/// Most bytes of an unfinished request head held back; more is `431`.
pub const HEAD_MAX_BYTES: usize = 64 * 1024;
/// Most header lines in one head (hyper's own limit); more is `431`.
const HEADERS_MAX_COUNT: usize = 100;
/// Longest chunk-size line or trailer line of a chunked body.
const CHUNK_LINE_MAX: usize = 4 * 1024;
/// Most bytes of empty lines accepted before a request line.
const LEADING_EMPTY_MAX: usize = 8;

/// Where a connection's byte stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before or inside a request head; `scanned` bytes of it were searched for its end.
    Head { scanned: usize },
    /// Inside a body of known length: this many bytes remain.
    Fixed(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
}

/// Where a chunked body stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line: the size so far, its digits, whether an extension began, the
    /// line's length and whether its CR was seen.
    Size { size: u64, digits: u32, in_extension: bool, line: usize, cr: bool },
    /// In a chunk's data: this many bytes remain.
    Data(u64),
    /// After a chunk's data: the CRLF, `seen` bytes of it so far.
    DataEnd { seen: u8 },
    /// In the trailer section: the current line's length and whether its CR was seen;
    /// `total` bytes of trailer so far.
    Trailer { line: usize, cr: bool, total: usize },
}

/// What the framer makes of the bytes not yet given to hyper.
#[derive(Debug)]
pub enum Step {
    /// The first this many bytes may go to hyper.
    Pass(usize),
    /// Nothing can be decided before more bytes arrive.
    NeedMore,
    /// The request breaks a rule; answer this and close.
    Refuse(NodeError),
}

/// Follows HTTP/1.1 request framing (RFC 9112): where each head ends, how long its body is.
/// Pure: bytes in, decisions out.
#[derive(Debug)]
pub struct Framer {
    state: State,
}

impl Default for Framer {
    fn default() -> Self {
        Self { state: State::Head { scanned: 0 } }
    }
}

impl Framer {
    /// Whether the stream stands between requests or inside a head.
    pub fn at_head(&self) -> bool {
        matches!(self.state, State::Head { .. })
    }

    /// Decides on `pending`, the bytes received and not yet passed (the first of them are
    /// the stream's next bytes).
    pub fn step(&mut self, pending: &[u8]) -> Step {
        if pending.is_empty() {
            return Step::NeedMore;
        }
        match &mut self.state {
            State::Head { scanned } => {
                let end = match head_end(pending, *scanned) {
                    Ok(Some(end)) => end,
                    Ok(None) => {
                        *scanned = pending.len();
                        return refuse_unfinished_head(pending);
                    }
                    Err(refusal) => return Step::Refuse(refusal),
                };
                match check_head(&pending[..end]) {
                    Ok(body) => {
                        self.state = body;
                        Step::Pass(end)
                    }
                    Err(refusal) => Step::Refuse(refusal),
                }
            }
            State::Fixed(remaining) => {
                let n = (*remaining).min(pending.len() as u64);
                *remaining -= n;
                if *remaining == 0 {
                    self.state = State::Head { scanned: 0 };
                }
                Step::Pass(n as usize)
            }
            State::Chunked(chunk) => match advance_chunked(chunk, pending) {
                Ok((n, done)) => {
                    if done {
                        self.state = State::Head { scanned: 0 };
                    }
                    if n == 0 {
                        Step::NeedMore
                    } else {
                        Step::Pass(n)
                    }
                }
                Err(refusal) => Step::Refuse(refusal),
            },
        }
    }
}

/// The length of the head at the front of `bytes` (through its empty line), searching
/// from `scanned` on; `None` while it is unfinished. The few empty lines a client may send
/// before a request line belong to the head (httparse skips them, for hyper as for us).
fn head_end(bytes: &[u8], scanned: usize) -> Result<Option<usize>, NodeError> {
    let Some(start) = bytes.iter().take(LEADING_EMPTY_MAX + 1).position(|b| !matches!(b, b'\r' | b'\n'))
    else {
        if bytes.len() > LEADING_EMPTY_MAX {
            return Err(malformed("too many empty lines before the request line"));
        }
        return Ok(None);
    };
    let mut i = scanned.saturating_sub(3).max(start);
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            // A line ends here; the head ends if the next line is empty.
            if bytes.get(i + 1) == Some(&b'\n') {
                return Ok(Some(i + 2));
            }
            if bytes.get(i + 1) == Some(&b'\r') && bytes.get(i + 2) == Some(&b'\n') {
                return Ok(Some(i + 3));
            }
        }
        i += 1;
    }
    Ok(None)
}

/// An unfinished head is refused once it is longer than any head the API takes.
fn refuse_unfinished_head(pending: &[u8]) -> Step {
    let line_max = URI_MAX_BYTES + 64;
    if pending.len() > line_max && !pending[..=line_max].contains(&b'\n') {
        return Step::Refuse(NodeError::UriTooLong(format!(
            "the request line is longer than {line_max} bytes; targets of at most {URI_MAX_BYTES} bytes are accepted"
        )));
    }
    if pending.len() > HEAD_MAX_BYTES {
        return Step::Refuse(NodeError::HeadersTooLarge(format!(
            "the request head is longer than {HEAD_MAX_BYTES} bytes"
        )));
    }
    Step::NeedMore
}

/// Checks a complete head and says how its body is framed.
fn check_head(head: &[u8]) -> Result<State, NodeError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX_COUNT];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(malformed("the request head ends before its request line does"));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(NodeError::HeadersTooLarge(format!(
                "the request has more than {HEADERS_MAX_COUNT} header lines"
            )));
        }
        Err(e) => return Err(malformed(&format!("the request head is not HTTP/1.1: {e}"))),
    }
    let target = request.path.map_or(0, str::len);
    if target > URI_MAX_BYTES {
        return Err(NodeError::UriTooLong(format!(
            "the request target has {target} bytes; at most {URI_MAX_BYTES} are accepted"
        )));
    }
    let header_bytes: usize = request.headers.iter().map(|h| h.name.len() + h.value.len() + 4).sum();
    if header_bytes > HEADERS_MAX_BYTES {
        return Err(NodeError::HeadersTooLarge(format!(
            "the request headers have {header_bytes} bytes; at most {HEADERS_MAX_BYTES} are accepted"
        )));
    }
    body_framing(request.headers)
}

/// The body framing a request's headers declare; anything ambiguous is refused, so hyper
/// and this framer can never disagree on where a request ends.
fn body_framing(headers: &[httparse::Header<'_>]) -> Result<State, NodeError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).unwrap_or("").trim();
            let parsed = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| malformed("content-length is not a number"))?;
            if length.is_some() {
                return Err(malformed("the request has more than one content-length"));
            }
            length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(header.value).unwrap_or("").trim();
            if chunked || !value.eq_ignore_ascii_case("chunked") {
                return Err(malformed("the only transfer-encoding accepted is a single `chunked`"));
            }
            chunked = true;
        }
    }
    match (chunked, length) {
        (true, Some(_)) => Err(malformed("the request has both content-length and transfer-encoding")),
        (true, None) => Ok(State::Chunked(Chunk::size_line())),
        (false, Some(n)) if n > 0 => Ok(State::Fixed(n)),
        (false, _) => Ok(State::Head { scanned: 0 }),
    }
}

impl Chunk {
    fn size_line() -> Self {
        Self::Size { size: 0, digits: 0, in_extension: false, line: 0, cr: false }
    }
}

/// Follows a chunked body over `bytes`: how many of them belong to it, and whether it ended.
fn advance_chunked(chunk: &mut Chunk, bytes: &[u8]) -> Result<(usize, bool), NodeError> {
    let mut used = 0;
    while used < bytes.len() {
        if let Chunk::Data(remaining) = chunk {
            let n = (*remaining).min((bytes.len() - used) as u64);
            *remaining -= n;
            used += n as usize;
            if *remaining == 0 {
                *chunk = Chunk::DataEnd { seen: 0 };
            }
            continue;
        }
        let byte = bytes[used];
        used += 1;
        match chunk {
            Chunk::Size { size, digits, in_extension, line, cr } => {
                *line += 1;
                if *line > CHUNK_LINE_MAX {
                    return Err(malformed("a chunk-size line is too long"));
                }
                match byte {
                    b'\n' if *cr => {
                        if *digits == 0 {
                            return Err(malformed("a chunk has no size"));
                        }
                        *chunk = if *size == 0 {
                            Chunk::Trailer { line: 0, cr: false, total: 0 }
                        } else {
                            Chunk::Data(*size)
                        };
                    }
                    _ if *cr => return Err(malformed("a chunk-size line has a bare CR")),
                    b'\r' => *cr = true,
                    _ if *in_extension => {}
                    b';' => *in_extension = true,
                    _ => {
                        let digit = (byte as char)
                            .to_digit(16)
                            .ok_or_else(|| malformed("a chunk size is not hexadecimal"))?;
                        *digits += 1;
                        if *digits > 15 {
                            return Err(malformed("a chunk size is too large"));
                        }
                        *size = *size * 16 + u64::from(digit);
                    }
                }
            }
            Chunk::DataEnd { seen } => match (*seen, byte) {
                (0, b'\r') => *seen = 1,
                (1, b'\n') => *chunk = Chunk::size_line(),
                _ => return Err(malformed("a chunk's data is not followed by CRLF")),
            },
            Chunk::Trailer { line, cr, total } => {
                *total += 1;
                if *total > HEADERS_MAX_BYTES {
                    return Err(NodeError::HeadersTooLarge("the body's trailer is too large".into()));
                }
                match byte {
                    b'\n' if *cr => {
                        if *line == 0 {
                            return Ok((used, true));
                        }
                        *line = 0;
                        *cr = false;
                    }
                    _ if *cr => return Err(malformed("a trailer line has a bare CR")),
                    b'\r' => *cr = true,
                    _ => *line += 1,
                }
            }
            Chunk::Data(_) => unreachable!("data is consumed in bulk above"),
        }
    }
    Ok((used, false))
}

fn malformed(why: &str) -> NodeError {
    NodeError::InvalidArgument(format!("malformed request: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` to a framer in pieces of `piece` bytes, as reads would deliver it,
    /// and returns the bytes passed and the refusal's code, if any.
    fn frame(stream: &[u8], piece: usize) -> (Vec<u8>, Option<&'static str>) {
        let mut framer = Framer::default();
        let mut pending = Vec::new();
        let mut passed = Vec::new();
        let mut fed = 0;
        loop {
            match framer.step(&pending) {
                Step::Pass(n) => passed.extend(pending.drain(..n)),
                Step::Refuse(refusal) => return (passed, Some(refusal.status_and_code().1)),
                Step::NeedMore if fed == stream.len() => return (passed, None),
                Step::NeedMore => {
                    let end = (fed + piece).min(stream.len());
                    pending.extend_from_slice(&stream[fed..end]);
                    fed = end;
                }
            }
        }
    }

    /// Boundaries the framer saw: the length passed at each point it stood at a head.
    fn heads_in(stream: &[u8]) -> Vec<usize> {
        let mut framer = Framer::default();
        let mut at = 0;
        let mut heads = Vec::new();
        while at < stream.len() {
            if framer.at_head() {
                heads.push(at);
            }
            match framer.step(&stream[at..]) {
                Step::Pass(n) => at += n,
                _ => break,
            }
        }
        heads
    }

    const PUT: &[u8] = b"PUT /v1/kv/a HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n{\"value\":1}";
    const CHUNKED: &[u8] = b"PUT /v1/kv/b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
        4;ext=1\r\n{\"va\r\n7\r\nlue\":2}\r\n0\r\nx-trailer: t\r\n\r\n";
    const GET: &[u8] = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n";

    #[test]
    fn pipelined_requests_pass_whole_in_every_split() {
        let stream = [PUT, CHUNKED, b"\r\n", GET].concat();
        for piece in 1..=stream.len() {
            let (passed, refused) = frame(&stream, piece);
            assert_eq!(refused, None, "piece {piece}");
            assert_eq!(passed, stream, "piece {piece}");
        }
        // Each request's head is where the framer expects one: after the body before it.
        let heads = heads_in(&stream);
        assert_eq!(heads, vec![0, PUT.len(), PUT.len() + CHUNKED.len()]);
    }

    #[test]
    fn a_head_is_held_back_until_it_is_complete() {
        let mut framer = Framer::default();
        assert!(matches!(framer.step(&GET[..GET.len() - 1]), Step::NeedMore));
        assert!(matches!(framer.step(GET), Step::Pass(n) if n == GET.len()));
        // Bare LF line ends are HTTP/1.1 too (hyper takes them).
        let mut framer = Framer::default();
        let bare = b"GET /health HTTP/1.1\nhost: x\n\n";
        assert!(matches!(framer.step(bare), Step::Pass(n) if n == bare.len()));
    }

    #[test]
    fn bad_heads_and_framings_are_refused_with_their_codes() {
        let too_many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"HELLO\r\n\r\n".to_vec(), "invalid_argument"),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), "invalid_argument"),
            (b"GET / HTTP/1.1\r\ncontent-length: 1x\r\n\r\n".to_vec(), "invalid_argument"),
            (
                b"GET / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n".to_vec(),
                "invalid_argument",
            ),
            (
                b"PUT / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                "invalid_argument",
            ),
            (b"PUT / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n".to_vec(), "invalid_argument"),
            (b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(), "invalid_argument"),
            (b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY".to_vec(), "invalid_argument"),
            (
                b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\n".to_vec(),
                "invalid_argument",
            ),
            (format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(URI_MAX_BYTES)).into_bytes(), "uri_too_long"),
            (format!("GET /{}", "a".repeat(URI_MAX_BYTES + 100)).into_bytes(), "uri_too_long"),
            (
                format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "v".repeat(HEADERS_MAX_BYTES)).into_bytes(),
                "headers_too_large",
            ),
            (
                format!("GET / HTTP/1.1\r\nx: {}", "v".repeat(HEAD_MAX_BYTES)).into_bytes(),
                "headers_too_large",
            ),
            (format!("GET / HTTP/1.1\r\n{too_many}\r\n").into_bytes(), "headers_too_large"),
        ];
        for (stream, code) in cases {
            for piece in [1, 7, stream.len()] {
                let (_, refused) = frame(&stream, piece);
                assert_eq!(
                    refused,
                    Some(code),
                    "{:?} in pieces of {piece}",
                    String::from_utf8_lossy(&stream)
                );
            }
        }
    }

    #[test]
    fn a_body_is_never_read_as_a_head() {
        // A body that looks like a request (and one like garbage) passes as body bytes.
        let body = b"GET /x HTTP/1.1\r\n\r\n";
        let head = format!("PUT /v1/kv/a HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len());
        let stream = [head.as_bytes(), body, GET].concat();
        assert_eq!(heads_in(&stream), vec![0, head.len() + body.len()]);
        let (passed, refused) = frame(&stream, 3);
        assert_eq!((passed.len(), refused), (stream.len(), None));
    }

    #[test]
    fn a_slow_head_is_scanned_once_and_refused_at_the_limit() {
        // One byte at a time: each step resumes where the last stopped (no quadratic
        // rescans of a slowly sent head), and the head is refused right past the limit.
        let mut framer = Framer::default();
        let mut pending = b"GET / HTTP/1.1\r\n".to_vec();
        let refused_at = loop {
            pending.push(b'a');
            match framer.step(&pending) {
                Step::NeedMore => {
                    assert_eq!(framer.state, State::Head { scanned: pending.len() });
                }
                Step::Refuse(refusal) => break (pending.len(), refusal.status_and_code().1),
                Step::Pass(_) => panic!("an unfinished head passed"),
            }
        };
        assert_eq!(refused_at, (HEAD_MAX_BYTES + 1, "headers_too_large"));
        // Endless empty lines are no way around the limit; a few are allowed.
        let (_, refused) = frame(&b"\r\n".repeat(HEAD_MAX_BYTES), 1);
        assert_eq!(refused, Some("invalid_argument"));
        let stream = [b"\r\n\r\n", GET].concat();
        assert_eq!(frame(&stream, 1), (stream.clone(), None));
    }
}
