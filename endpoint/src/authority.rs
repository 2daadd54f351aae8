//! Lets every gRPC client talk to the CSI socket, including those that send
//! the socket path as the HTTP/2 `:authority` (grpc-python since 1.57 sends
//! it %-encoded, grpc-java, older csc and Bazel send it as is). The `h2`
//! crate under tonic rejects such a request with RST_STREAM PROTOCOL_ERROR
//! before any of our code sees it; only clients that send `localhost`
//! (grpc-go: kubelet, the sidecars, csi-sanity) got through.
//!
//! Why a connection shim: `h2` checks the authority while it decodes the
//! HEADERS frame and offers no switch to relax it (hyperium/h2 pull request
//! 487 proposes one and is still open), so neither tonic nor hyper can
//! rewrite the header before the check. Patching `h2` would mean carrying a
//! fork. Instead, every connection's client-to-server bytes pass through
//! [`AuthorityFix`], which re-frames each header block: it decodes the block
//! with the client's HPACK context, replaces an `:authority` that is not a
//! valid URI authority with `localhost` (on a Unix socket the authority
//! names nothing: the socket path is the peer), and encodes the block again
//! with an HPACK context of its own, which the server decodes. Every header
//! block is re-encoded, valid or not, because the two HPACK contexts must
//! each see every block. All other frames pass through untouched, as does
//! everything the server writes. Once `h2` accepts these authorities, this
//! module can go.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The authority a rejected one is replaced with, as grpc-go sends it.
const REPLACEMENT: &[u8] = b"localhost";
/// The client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// The smallest SETTINGS_MAX_FRAME_SIZE a server may announce; the frames
/// written here never exceed it, whatever the server allows.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// A header block (compressed) larger than this is refused; CSI requests
/// carry a few hundred bytes of headers.
pub const MAX_HEADER_BLOCK: usize = 64 << 10;
/// A header list larger than this once decoded is refused: HPACK lets a
/// one-byte reference stand for a 4 KiB table entry, so the compressed
/// bound alone would let a block grow a thousandfold.
pub const MAX_HEADER_LIST: usize = 64 << 10;

/// A connection whose client-to-server header blocks carry a valid `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet read by the server, from `ready_from` on.
    ready: Vec<u8>,
    ready_from: usize,
    chunk: Box<[u8]>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps one accepted connection.
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::default(),
            ready: Vec::new(),
            ready_from: 0,
            chunk: vec![0; MAX_FRAME_PAYLOAD].into_boxed_slice(),
            eof: false,
        }
    }
}

/// A header block spread over HEADERS and CONTINUATION frames.
struct PendingBlock {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    block: Vec<u8>,
}

/// The byte-level rewrite, apart from any I/O so it is tested on its own.
struct Rewriter {
    preface_left: usize,
    input: Vec<u8>,
    pending: Option<PendingBlock>,
    /// The client's HPACK context. Its table may grow to what the server
    /// announces, 4096 bytes: tonic leaves SETTINGS_HEADER_TABLE_SIZE at the
    /// HPACK default, the limit this decoder starts with.
    decoder: Decoder<'static>,
    /// Ours, as the server's decoder sees it; its table is 4096 bytes too,
    /// what h2's decoder allows under that same default.
    encoder: Encoder<'static>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter { preface_left: PREFACE_LEN, input: Vec::new(), pending: None, decoder: Decoder::new(), encoder: Encoder::new() }
    }
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

impl Rewriter {
    /// Takes `bytes` from the client and appends to `out` what the server
    /// may read so far (whole frames; a partial frame waits for more).
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.input.extend_from_slice(bytes);
        let preface = self.preface_left.min(self.input.len());
        out.extend_from_slice(&self.input[..preface]);
        self.input.drain(..preface);
        self.preface_left -= preface;
        while self.input.len() >= FRAME_HEADER_LEN {
            let header = &self.input[..FRAME_HEADER_LEN];
            let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            // The server announces no larger frames (h2's default), so a
            // larger one is an error anyway: refused before it is buffered.
            if len > MAX_FRAME_PAYLOAD {
                return Err(invalid(format!("a frame of {len} bytes exceeds the {MAX_FRAME_PAYLOAD} bytes the server allows")));
            }
            if self.input.len() < FRAME_HEADER_LEN + len {
                break;
            }
            let frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + len).collect();
            self.frame(&frame, out)?;
        }
        Ok(())
    }

    /// What is left when the client has closed: passed on as it is, for
    /// the server to judge.
    fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.input)
    }

    fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let (kind, flags, stream, payload) = (frame[3], frame[4], [frame[5], frame[6], frame[7], frame[8]], &frame[FRAME_HEADER_LEN..]);
        match (kind, self.pending.take()) {
            (HEADERS, None) => {
                let mut start = 0;
                let mut end = payload.len();
                if flags & PADDED != 0 {
                    let pad = usize::from(*payload.first().ok_or_else(|| invalid("HEADERS frame too short for its padding"))?);
                    start = 1;
                    end = end.checked_sub(pad).ok_or_else(|| invalid("HEADERS padding longer than the frame"))?;
                }
                let priority = if flags & PRIORITY != 0 {
                    let bytes = payload.get(start..start + PRIORITY_LEN).ok_or_else(|| invalid("HEADERS frame too short for its priority"))?;
                    start += PRIORITY_LEN;
                    let mut priority = [0; PRIORITY_LEN];
                    priority.copy_from_slice(bytes);
                    Some(priority)
                } else {
                    None
                };
                let fragment = payload.get(start..end).ok_or_else(|| invalid("HEADERS frame shorter than its padding and priority"))?;
                let pending = PendingBlock { stream, end_stream: flags & END_STREAM != 0, priority, block: fragment.to_vec() };
                self.continue_block(pending, flags, out)
            }
            (CONTINUATION, Some(mut pending)) if pending.stream == stream => {
                pending.block.extend_from_slice(payload);
                self.continue_block(pending, flags, out)
            }
            (_, Some(_)) => Err(invalid("a header block was interrupted by another frame")),
            _ => {
                out.extend_from_slice(frame);
                Ok(())
            }
        }
    }

    fn continue_block(&mut self, pending: PendingBlock, flags: u8, out: &mut Vec<u8>) -> io::Result<()> {
        if pending.block.len() > MAX_HEADER_BLOCK {
            return Err(invalid(format!("header block larger than {MAX_HEADER_BLOCK} bytes")));
        }
        if flags & END_HEADERS == 0 {
            self.pending = Some(pending);
            return Ok(());
        }
        let block = self.reencode(&pending.block)?;
        write_header_frames(&pending, &block, out);
        Ok(())
    }

    /// Decodes a whole block in the client's context and encodes it in ours,
    /// with a rejected `:authority` replaced.
    fn reencode(&mut self, block: &[u8]) -> io::Result<Vec<u8>> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // Counted as HTTP/2 counts a header list: name, value and 32 bytes each.
        let mut list_bytes = 0usize;
        self.decoder
            .decode_with_cb(block, |name, value| {
                list_bytes = list_bytes.saturating_add(name.len() + value.len() + 32);
                // Past the bound nothing more is kept: the block is refused below.
                if list_bytes > MAX_HEADER_LIST {
                    return;
                }
                let value = if &*name == b":authority" && !valid_authority(&value) { REPLACEMENT.to_vec() } else { value.into_owned() };
                fields.push((name.into_owned(), value));
            })
            .map_err(|e| invalid(format!("undecodable header block: {e:?}")))?;
        if list_bytes > MAX_HEADER_LIST {
            return Err(invalid(format!("a header list of {list_bytes} bytes exceeds {MAX_HEADER_LIST}")));
        }
        Ok(self.encoder.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))))
    }
}

fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// One HEADERS frame and as many CONTINUATION frames as `block` needs.
fn write_header_frames(pending: &PendingBlock, block: &[u8], out: &mut Vec<u8>) {
    let priority: &[u8] = pending.priority.as_ref().map_or(&[], |p| p.as_slice());
    let first_room = MAX_FRAME_PAYLOAD - priority.len();
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = if pending.end_stream { END_STREAM } else { 0 } | if pending.priority.is_some() { PRIORITY } else { 0 };
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    write_frame(out, HEADERS, flags, pending.stream, &[priority, first]);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        rest = tail;
        write_frame(out, CONTINUATION, if rest.is_empty() { END_HEADERS } else { 0 }, pending.stream, &[chunk]);
    }
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: [u8; 4], parts: &[&[u8]]) {
    let len = parts.iter().map(|p| p.len()).sum::<usize>();
    // `len` is at most MAX_FRAME_PAYLOAD, well inside 24 bits.
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream);
    for part in parts {
        out.extend_from_slice(part);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_from < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_from);
                buf.put_slice(&this.ready[this.ready_from..this.ready_from + n]);
                this.ready_from += n;
                if this.ready_from == this.ready.len() {
                    this.ready.clear();
                    this.ready_from = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                this.eof = true;
                this.ready = this.rewriter.finish();
            } else {
                this.rewriter.push(chunk.filled(), &mut this.ready)?;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, kind, flags, stream.to_be_bytes(), &[payload]);
        out
    }

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        [(":method", b"POST".as_slice()), (":scheme", b"http"), (":path", b"/csi.v1.Identity/Probe"), (":authority", authority), ("te", b"trailers")]
            .into_iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    fn encode(encoder: &mut Encoder<'static>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    /// Splits the server-side bytes into frames: (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut found = Vec::new();
        while bytes.len() >= FRAME_HEADER_LEN {
            let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            found.push((bytes[3], bytes[4], stream, bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec()));
            bytes = &bytes[FRAME_HEADER_LEN + len..];
        }
        assert!(bytes.is_empty(), "a partial frame was passed on");
        found
    }

    fn decode(decoder: &mut Decoder<'static>, block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        decoder.decode(block).expect("the server can decode what it is given")
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut client = Encoder::new();
        let mut server = Decoder::new();
        let mut rewriter = Rewriter::default();
        let mut out = Vec::new();
        let settings = frame(0x4, 0, 0, &[]);
        let mut input = PREFACE.to_vec();
        input.extend(&settings);
        for (stream, authority) in [(1, b"%2Ftmp%2Fcsi.sock".as_slice()), (3, b"/var/lib/kubelet/plugins/csi.sock"), (5, b"localhost"), (7, b"/again.sock")] {
            input.extend(frame(HEADERS, END_HEADERS, stream, &encode(&mut client, &request(authority))));
            input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        // Byte by byte: frames split anywhere are reassembled.
        for byte in &input {
            rewriter.push(std::slice::from_ref(byte), &mut out).expect("rewrite");
        }
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let frames = frames(&out[PREFACE.len()..]);
        assert_eq!(frames[0], (0x4, 0, 0, Vec::new()), "SETTINGS untouched");
        let headers: Vec<_> = frames.iter().filter(|f| f.0 == HEADERS).collect();
        let data: Vec<_> = frames.iter().filter(|f| f.0 == 0x0).collect();
        assert_eq!(data.len(), 4);
        assert!(data.iter().all(|f| f.1 == END_STREAM && f.3 == b"\0\0\0\0\0"), "DATA untouched");
        // Decoded in order with one context, as the server does: the
        // dynamic tables stay in step across requests.
        let expected = [b"localhost".as_slice(), b"localhost", b"localhost", b"localhost"];
        for (frame, authority) in headers.iter().zip(expected) {
            assert_eq!(frame.1, END_HEADERS);
            assert_eq!(decode(&mut server, &frame.3), request(authority));
        }
    }

    #[test]
    fn padding_priority_and_continuations_are_handled() {
        let mut client = Encoder::new();
        let mut fields = request(b"/tmp/x.sock");
        fields.push((b"big".to_vec(), vec![b'v'; 40_000]));
        let block = encode(&mut client, &fields);
        let (a, rest) = block.split_at(100);
        let (b, rest) = rest.split_at(16_000);
        let (b2, c) = rest.split_at(16_000);
        let mut payload = vec![3u8]; // pad length
        payload.extend([0x80, 0, 0, 0, 16]); // exclusive dependency on stream 0, weight 16
        payload.extend(a);
        payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
        input.extend(frame(CONTINUATION, 0, 1, b));
        input.extend(frame(CONTINUATION, 0, 1, b2));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
        let mut out = Vec::new();
        Rewriter::default().push(&input, &mut out).expect("rewrite");
        let frames = frames(&out[PREFACE.len()..]);
        assert!(frames.len() >= 3, "a 40 kB block needs continuations: {}", frames.len());
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME_PAYLOAD));
        let (kind, flags, stream, first) = &frames[0];
        assert_eq!((*kind, *flags, *stream), (HEADERS, PRIORITY | END_STREAM, 1), "no padding, priority and END_STREAM kept");
        assert_eq!(&first[..PRIORITY_LEN], [0x80, 0, 0, 0, 16]);
        let mut block = first[PRIORITY_LEN..].to_vec();
        for (i, (kind, flags, stream, payload)) in frames[1..].iter().enumerate() {
            let last = i == frames.len() - 2;
            assert_eq!((*kind, *flags, *stream), (CONTINUATION, if last { END_HEADERS } else { 0 }, 1));
            block.extend(payload);
        }
        let mut expected = request(b"localhost");
        expected.push((b"big".to_vec(), vec![b'v'; 40_000]));
        assert_eq!(decode(&mut Decoder::new(), &block), expected);
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_buffered() {
        let mut input = PREFACE.to_vec();
        // A DATA frame header announcing 16 MiB - 1, and no payload yet.
        input.extend([0xff, 0xff, 0xff, 0x0, 0, 0, 0, 0, 1]);
        let err = Rewriter::default().push(&input, &mut Vec::new()).expect_err("refused");
        assert!(err.to_string().contains("16777215 bytes"), "{err}");
    }

    #[test]
    fn a_header_list_that_decodes_past_its_bound_is_refused() {
        let mut client = Encoder::new();
        let big = (b"x-big".to_vec(), vec![b'v'; 4000]);
        let mut first = request(b"localhost");
        first.push(big.clone());
        let mut rewriter = Rewriter::default();
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &encode(&mut client, &first)));
        rewriter.push(&input, &mut Vec::new()).expect("one 4 kB header is fine");
        // Each repeat is a one-byte reference to the table entry: a few
        // hundred bytes on the wire, 400 kB decoded.
        let mut bomb = request(b"localhost");
        bomb.extend(std::iter::repeat_n(big, 100));
        let block = encode(&mut client, &bomb);
        assert!(block.len() < 1000, "{} bytes", block.len());
        let err = rewriter.push(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &block), &mut Vec::new()).expect_err("refused");
        assert!(err.to_string().contains("header list"), "{err}");
    }

    #[test]
    fn broken_input_is_an_error_never_a_panic() {
        let cases: Vec<Vec<u8>> = vec![
            frame(HEADERS, PADDED | END_HEADERS, 1, &[]),
            frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 1, 2]),
            frame(HEADERS, PRIORITY | END_HEADERS, 1, &[1, 2]),
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff]),
            [frame(HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, b"x")].concat(),
            [frame(HEADERS, 0, 1, &[0x82]), frame(CONTINUATION, END_HEADERS, 3, &[0x86])].concat(),
        ];
        for case in cases {
            let mut input = PREFACE.to_vec();
            input.extend(&case);
            assert!(Rewriter::default().push(&input, &mut Vec::new()).is_err(), "{case:?}");
        }
        // A lone CONTINUATION or an unknown frame is the server's to judge.
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b"x"));
        input.extend(frame(0x42, 0, 1, b"y"));
        let mut out = Vec::new();
        Rewriter::default().push(&input, &mut out).expect("passed on");
        assert_eq!(out, input);
    }

    #[test]
    fn a_truncated_stream_is_passed_on_at_the_end() {
        let mut rewriter = Rewriter::default();
        let mut out = Vec::new();
        rewriter.push(&PREFACE[..10], &mut out).expect("push");
        rewriter.push(&PREFACE[10..], &mut out).expect("push");
        rewriter.push(&[0, 0, 5, 0, 0], &mut out).expect("push");
        assert_eq!(out, PREFACE);
        assert_eq!(rewriter.finish(), [0, 0, 5, 0, 0]);
    }

    #[test]
    fn random_header_blocks_are_refused_or_passed_never_a_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // One context across all blocks too, so table-size updates and
        // evictions pile up as they would on a long connection.
        let mut shared = Rewriter::default();
        shared.push(PREFACE, &mut Vec::new()).expect("preface");
        for _ in 0..20_000 {
            let block: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            let flags = END_HEADERS | (next() as u8 & (PADDED | PRIORITY));
            let mut fresh = Rewriter::default();
            let _ = fresh.push(&[PREFACE, &frame(HEADERS, flags, 1, &block)].concat(), &mut Vec::new());
            let _ = shared.push(&frame(HEADERS, flags, 1, &block), &mut Vec::new());
        }
    }
}
