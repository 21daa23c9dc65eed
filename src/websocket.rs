//! Inbound websockets on the raw socket, after actix-http's upgrade.
//!
//! actix-http keeps an 8 KiB read and an 8 KiB write buffer for as long as a
//! connection lives, and actix-ws adds its own buffer and channel on top:
//! about 20 KiB for a client that sends nothing (the `idle` bench). A Tool
//! Db node holds thousands of idle clients, so once the HTTP request is an
//! upgrade the socket is taken out of the HTTP dispatcher (see
//! `server::ws_upgrade`) and read and written here with buffers that exist
//! only while bytes are in flight:
//!
//! - `WsReader` reads into a buffer on the stack of its poll and keeps
//!   bytes only while a frame is incomplete; whole frames are decoded with
//!   actix-http's websocket codec (size limit, masking, control frames) and
//!   fragments are joined up to the message limit, as actix-ws did.
//! - `WsWriter` encodes frames into a buffer it frees once written.
//!
//! What the reader holds counts as unfinished bytes (`admission`), as
//! before.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_http::ws::{Codec, Frame, Item, Message, ProtocolError};
use actix_ws::AggregatedMessage;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};

use crate::admission::Unfinished;

/// One read's stack buffer: most Tool Db messages fit in one.
const READ_CHUNK: usize = 8 * 1024;
/// Encoded bytes past which the writer writes before taking more.
const WRITE_HIGH: usize = 64 * 1024;

/// The text of a message over the limit once its fragments are joined
/// (the session tells it from a frame over the limit by it).
pub const MESSAGE_TOO_LARGE: &str = "Exceeded maximum continuation size";

pub struct WsReader<R> {
    io: R,
    /// Bytes of an incomplete frame; empty (no allocation) otherwise.
    buf: BytesMut,
    codec: Codec,
    /// Fragments of a message begun, and whether it is text.
    fragments: Vec<Bytes>,
    fragments_len: usize,
    text: bool,
    /// A message passed the limit: its later fragments are dropped.
    overflowed: bool,
    max_message: usize,
    meter: Option<Unfinished>,
    eof: bool,
    failed: bool,
}

impl<R> WsReader<R> {
    /// `leftover`: what the HTTP layer read past the upgrade request.
    pub fn new(io: R, leftover: BytesMut, max_frame: usize, meter: Option<Unfinished>) -> Self {
        if let Some(m) = &meter {
            if !leftover.is_empty() {
                m.add(leftover.len());
            }
        }
        WsReader {
            io,
            buf: leftover,
            codec: Codec::new().max_size(max_frame),
            fragments: Vec::new(),
            fragments_len: 0,
            text: false,
            overflowed: false,
            max_message: max_frame,
            meter,
            eof: false,
            failed: false,
        }
    }

    /// A whole frame out of the buffer, if there is one.
    fn decode(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let frame = self.codec.decode(&mut self.buf)?;
        if self.buf.is_empty() {
            // Idle sockets hold no buffer (the frame's bytes live on in it).
            self.buf = BytesMut::new();
        }
        Ok(frame)
    }

    /// Adds a fragment; the message once its last one came.
    fn fragment(
        &mut self,
        bytes: Bytes,
        first: Option<bool>,
        last: bool,
    ) -> Option<Result<AggregatedMessage, ProtocolError>> {
        if let Some(text) = first {
            self.text = text;
        }
        if self.overflowed {
            if last {
                self.overflowed = false;
            }
            return None;
        }
        self.fragments_len += bytes.len();
        if self.fragments_len > self.max_message {
            self.fragments.clear();
            self.fragments_len = 0;
            self.overflowed = !last;
            return Some(Err(ProtocolError::Io(io::Error::other(MESSAGE_TOO_LARGE))));
        }
        // Empty fragments are not kept: a stream of them costs nothing.
        if !bytes.is_empty() {
            self.fragments.push(bytes);
        }
        if !last {
            return None;
        }
        let mut whole = BytesMut::with_capacity(self.fragments_len);
        for b in self.fragments.drain(..) {
            whole.extend_from_slice(&b);
        }
        self.fragments = Vec::new();
        self.fragments_len = 0;
        let whole = whole.freeze();
        Some(if self.text {
            text(whole)
        } else {
            Ok(AggregatedMessage::Binary(whole))
        })
    }

    fn message(&mut self, frame: Frame) -> Option<Result<AggregatedMessage, ProtocolError>> {
        match frame {
            Frame::Text(b) => Some(text(b)),
            Frame::Binary(b) => Some(Ok(AggregatedMessage::Binary(b))),
            Frame::Ping(b) => Some(Ok(AggregatedMessage::Ping(b))),
            Frame::Pong(b) => Some(Ok(AggregatedMessage::Pong(b))),
            Frame::Close(r) => Some(Ok(AggregatedMessage::Close(r))),
            Frame::Continuation(Item::FirstText(b)) => self.fragment(b, Some(true), false),
            Frame::Continuation(Item::FirstBinary(b)) => self.fragment(b, Some(false), false),
            Frame::Continuation(Item::Continue(b)) => self.fragment(b, None, false),
            Frame::Continuation(Item::Last(b)) => self.fragment(b, None, true),
        }
    }
}

fn text(b: Bytes) -> Result<AggregatedMessage, ProtocolError> {
    ByteString::try_from(b)
        .map(AggregatedMessage::Text)
        .map_err(|e| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))
}

impl<R: AsyncRead + Unpin> Stream for WsReader<R> {
    type Item = Result<AggregatedMessage, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        loop {
            match this.decode() {
                Ok(Some(frame)) => {
                    if let Some(m) = this.message(frame) {
                        return Poll::Ready(Some(m));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    // The codec's state is unknown after a bad frame.
                    this.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.eof {
                return Poll::Ready(None);
            }
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            match ready!(Pin::new(&mut this.io).poll_read(cx, &mut read)) {
                Ok(()) if read.filled().is_empty() => this.eof = true,
                Ok(()) => {
                    let n = read.filled().len();
                    if let Some(m) = &this.meter {
                        if !m.add(n) {
                            this.failed = true;
                            return Poll::Ready(Some(Err(ProtocolError::Io(io::Error::other(
                                "the node's buffer for unfinished messages is full",
                            )))));
                        }
                    }
                    this.buf.extend_from_slice(read.filled());
                }
                Err(e) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(e))));
                }
            }
        }
    }
}

pub struct WsWriter<W> {
    io: W,
    /// Encoded frames not yet written; freed once they are.
    buf: BytesMut,
    codec: Codec,
}

impl<W> WsWriter<W> {
    pub fn new(io: W) -> Self {
        WsWriter {
            io,
            buf: BytesMut::new(),
            codec: Codec::new(),
        }
    }
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    fn poll_write_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = self.buf.split_to(n);
        }
        self.buf = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<Message> for WsWriter<W> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.len() >= WRITE_HIGH {
            ready!(this.poll_write_buf(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> io::Result<()> {
        let this = self.get_mut();
        this.codec
            .encode(msg, &mut this.buf)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_buf(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_buf(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;

    /// A client's frames: masked, as browsers send them.
    fn client_frames(msgs: Vec<Message>) -> BytesMut {
        let mut codec = Codec::new().client_mode();
        let mut out = BytesMut::new();
        for m in msgs {
            codec.encode(m, &mut out).unwrap();
        }
        out
    }

    #[actix::test]
    async fn reads_whole_and_fragmented_messages_and_holds_no_buffer_between() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = WsReader::new(server, BytesMut::new(), 1 << 20, None);
        let bytes = client_frames(vec![
            Message::Text("hello".into()),
            Message::Continuation(Item::FirstText(Bytes::from_static(b"wor"))),
            Message::Ping(Bytes::from_static(b"p")),
            Message::Continuation(Item::Last(Bytes::from_static(b"ld"))),
        ]);
        // A 64-byte pipe: frames arrive in pieces.
        tokio::spawn(async move { client.write_all(&bytes).await.unwrap() });
        let got: Vec<_> = (&mut reader).take(3).collect().await;
        assert_eq!(
            got.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![
                AggregatedMessage::Text("hello".into()),
                AggregatedMessage::Ping(Bytes::from_static(b"p")),
                AggregatedMessage::Text("world".into()),
            ]
        );
        assert_eq!(reader.buf.capacity(), 0, "nothing held while idle");
    }

    #[actix::test]
    async fn a_frame_over_the_limit_and_a_message_over_it_are_errors() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = WsReader::new(server, BytesMut::new(), 10, None);
        let bytes = client_frames(vec![
            Message::Continuation(Item::FirstText(Bytes::from_static(b"123456"))),
            Message::Continuation(Item::Last(Bytes::from_static(b"789012"))),
            Message::Text("ok".into()),
            Message::Text("01234567890".into()),
        ]);
        client.write_all(&bytes).await.unwrap();
        match reader.next().await.unwrap() {
            Err(ProtocolError::Io(e)) => assert_eq!(e.to_string(), MESSAGE_TOO_LARGE),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reader.next().await.unwrap().unwrap(),
            AggregatedMessage::Text("ok".into())
        );
        assert!(matches!(
            reader.next().await.unwrap(),
            Err(ProtocolError::Overflow)
        ));
        assert!(reader.next().await.is_none(), "nothing after a bad frame");
    }

    #[actix::test]
    async fn an_unmasked_frame_from_a_client_is_refused() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = WsReader::new(server, BytesMut::new(), 1 << 20, None);
        let mut unmasked = BytesMut::new();
        Codec::new()
            .encode(Message::Text("x".into()), &mut unmasked)
            .unwrap();
        client.write_all(&unmasked).await.unwrap();
        assert!(reader.next().await.unwrap().is_err());
    }

    #[actix::test]
    async fn the_writer_sends_frames_a_client_reads_then_frees_its_buffer() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut writer = WsWriter::new(server);
        writer.send(Message::Text("a".into())).await.unwrap();
        writer.feed(Message::Text("b".into())).await.unwrap();
        writer.flush().await.unwrap();
        assert_eq!(writer.buf.capacity(), 0);
        writer.close().await.unwrap();
        let mut client = tokio_util::codec::FramedRead::new(client, Codec::new().client_mode());
        let mut got = vec![];
        while let Some(f) = client.next().await {
            got.push(f.unwrap());
        }
        assert_eq!(
            got,
            vec![
                Frame::Text(Bytes::from_static(b"a")),
                Frame::Text(Bytes::from_static(b"b"))
            ]
        );
    }
}
