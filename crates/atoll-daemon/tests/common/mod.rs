//! Test harness: a daemon serving on a unix socket in a temp dir (as the
//! test's own user), and a small HTTP/1 client over that socket.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

use atoll_daemon::DaemonConfig;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "atoll-daemon-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Daemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub work: PathBuf,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// Asserts Daytona's error body with `status` and `code`.
    pub fn assert_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), "application/json");
        let v = self.json();
        assert_eq!(v["statusCode"], status);
        assert_eq!(v["code"], code, "body: {v}");
        assert_eq!(v["source"], "DAYTONA_DAEMON");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(v["timestamp"].is_string());
        assert!(v["path"].is_string());
        assert!(v["method"].is_string());
        v
    }
}

impl Daemon {
    pub async fn start() -> Self {
        Self::start_with(None, BTreeMap::new()).await
    }

    pub async fn start_with(user: Option<String>, env: BTreeMap<String, String>) -> Self {
        Self::start_with_entrypoint(user, env, Vec::new()).await
    }

    /// A daemon whose image has `entrypoint` (started at boot).
    pub async fn start_with_entrypoint(
        user: Option<String>,
        env: BTreeMap<String, String>,
        entrypoint: Vec<String>,
    ) -> Self {
        let dir = TempDir::new();
        let socket = dir.0.join("daemon.sock");
        let work = dir.0.join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        let cfg = DaemonConfig {
            socket: socket.clone(),
            user,
            env,
            work_dir: Some(work.clone()),
            env_file: Some(dir.0.join("env.json")),
            entrypoint,
        };
        let listener = UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move {
            if let Err(e) = atoll_daemon::serve(listener, cfg).await {
                panic!("serve failed: {e}");
            }
        });
        Daemon { dir, socket, work }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.work.join(rel)
    }

    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let stream = UnixStream::connect(&self.socket).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "sandbox");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).expect("request");
        let res = sender.send_request(req).await.expect("send");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, uri: &str, body: serde_json::Value) -> Reply {
        self.send(
            Method::POST,
            uri,
            &[("content-type", "application/json")],
            Bytes::from(body.to_string()),
        )
        .await
    }

    pub async fn post(&self, uri: &str) -> Reply {
        self.send(Method::POST, uri, &[], Bytes::new()).await
    }

    pub async fn delete(&self, uri: &str) -> Reply {
        self.send(Method::DELETE, uri, &[], Bytes::new()).await
    }

    pub async fn exec(&self, body: serde_json::Value) -> Reply {
        self.post_json("/process/execute", body).await
    }
}

/// Percent-encodes a query value.
pub fn q(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A multipart/form-data request body.
pub struct MultipartBuilder {
    pub boundary: String,
    body: Vec<u8>,
}

impl MultipartBuilder {
    pub fn new() -> Self {
        MultipartBuilder {
            boundary: format!("test-{}", uuid::Uuid::new_v4().simple()),
            body: Vec::new(),
        }
    }

    pub fn text(mut self, name: &str, value: &str) -> Self {
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self
    }

    pub fn file(mut self, name: &str, filename: &str, data: &[u8]) -> Self {
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    pub fn finish(mut self) -> (String, Bytes) {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (self.content_type(), Bytes::from(self.body))
    }

    /// The body without its closing delimiter (a truncated upload).
    pub fn unfinished(self) -> (String, Bytes) {
        (self.content_type(), Bytes::from(self.body))
    }
}

/// One part of a multipart response.
#[derive(Debug)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Part {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Parses a multipart body by its delimiters (as the SDK does, ignoring
/// Content-Length); panics unless it ends with the closing delimiter.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("boundary in content type")
        .trim_matches('"');
    let open = format!("--{boundary}");
    let delim = format!("\r\n--{boundary}");
    assert!(
        body.starts_with(open.as_bytes()),
        "body starts with the delimiter"
    );
    let mut pos = open.len();
    let mut parts = Vec::new();
    loop {
        if body[pos..].starts_with(b"--") {
            assert_eq!(&body[pos..], b"--\r\n", "closing delimiter ends the body");
            return parts;
        }
        assert!(body[pos..].starts_with(b"\r\n"));
        pos += 2;
        let head_end = find(body, b"\r\n\r\n", pos).expect("end of part headers");
        let headers = String::from_utf8_lossy(&body[pos..head_end])
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let data_start = head_end + 4;
        let data_end = find(body, delim.as_bytes(), data_start).expect("next delimiter");
        parts.push(Part {
            headers,
            body: body[data_start..data_end].to_vec(),
        });
        pos = data_end + delim.len();
    }
}
