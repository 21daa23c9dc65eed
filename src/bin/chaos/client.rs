//! A small blocking Tool Db client for the harness: HTTP GET for `/health`
//! and `/peers`, and a websocket peer that pings with a signed peer record,
//! puts signed records and gets them back. Every call has a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use tooldb_node::crypto::NodeKey;
use tooldb_node::messages::wire::new_message_id;
use tooldb_node::peer::Peer;
use tooldb_node::record::{now_ms, sign_record};
use tungstenite::{Message, WebSocket};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_SLICE: Duration = Duration::from_millis(100);

/// GET `path` on `addr`; the status and body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout.min(CONNECT_TIMEOUT))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status"))?;
    Ok((status, body.to_owned()))
}

/// GET `path` and parse JSON from a 200 answer.
pub fn http_json(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<Value> {
    let (status, body) = http_get(addr, path, timeout)?;
    if status != 200 {
        bail!("{path}: HTTP {status}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// A raw Tool Db peer (a client, not a server).
pub struct WireClient {
    ws: WebSocket<TcpStream>,
    key: std::sync::Arc<NodeKey>,
    client_id: String,
}

impl WireClient {
    /// Connects and completes the ping/pong handshake.
    pub fn connect(
        addr: SocketAddr,
        topic: &str,
        key: std::sync::Arc<NodeKey>,
    ) -> anyhow::Result<WireClient> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.set_write_timeout(Some(Duration::from_secs(3)))?;
        stream.set_nodelay(true)?;
        let (ws, _) = tungstenite::client(format!("ws://{addr}/"), stream)
            .map_err(|e| anyhow!("websocket handshake: {e}"))?;
        ws.get_ref().set_read_timeout(Some(READ_SLICE))?;
        let client_id = key.client_id().to_owned();
        let mut c = WireClient { ws, key, client_id };
        let peer = Peer::sign(&c.key, topic, "127.0.0.1", 8080, now_ms());
        let ping = json!({"type":"ping","id":new_message_id(),"to":[c.client_id],
                          "clientId":c.client_id,"isServer":false,"peer":peer});
        c.send(&ping)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(v) = c.recv()? {
                if v["type"] == "pong" {
                    return Ok(c);
                }
            }
        }
        bail!("no pong within 5 s")
    }

    fn send(&mut self, v: &Value) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(v.to_string()))
            .context("websocket send")
    }

    /// One frame, or None when nothing came within the read slice.
    fn recv(&mut self) -> anyhow::Result<Option<Value>> {
        match self.ws.read() {
            Ok(Message::Text(t)) => Ok(serde_json::from_str(&t).ok()),
            Ok(Message::Close(_)) => bail!("closed by the server"),
            Ok(_) => Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(anyhow!("websocket: {e}")),
        }
    }

    /// Signs and sends a plain record with timestamp now; returns it.
    pub fn put(&mut self, key: &str, value: &Value) -> anyhow::Result<Value> {
        let rec = sign_record(&self.key, key, value, now_ms());
        let record: Value = serde_json::from_str(rec.raw())?;
        let msg = json!({"type":"put","id":new_message_id(),"to":[self.client_id],"data":record});
        self.send(&msg)?;
        Ok(record)
    }

    /// Gets every key in `keys` (all requests first, then the answers);
    /// the record each answer carried, None for keys with no answer by
    /// `timeout`.
    pub fn get_many(
        &mut self,
        keys: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Vec<Option<Value>>> {
        let mut ids = std::collections::HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let id = new_message_id();
            self.send(&json!({"type":"get","id":id,"to":[self.client_id],"key":key}))?;
            ids.insert(id, i);
        }
        let mut out = vec![None; keys.len()];
        let mut left = keys.len();
        let deadline = Instant::now() + timeout;
        while left > 0 && Instant::now() < deadline {
            if let Some(v) = self.recv()? {
                let Some(id) = v["id"].as_str() else { continue };
                if let Some(&i) = ids.get(id) {
                    if out[i].is_none() && v["data"].is_object() {
                        out[i] = Some(v["data"].clone());
                        left -= 1;
                    }
                }
            }
        }
        Ok(out)
    }
}
