//! A minimal HTTP/1.1 keep-alive client for the api figure and the throughput figure's
//! triggers: one fixed request (a GET, or a POST without a body) written and its response
//! read by `Content-Length`, so that the load generator, which shares the cores with the
//! services under test, costs about as little as the Redis client of a baseline.

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Connection {
    /// A connection that sends `GET path`.
    pub(crate) async fn get(port: u16, path: &str, token: &str) -> anyhow::Result<Self> {
        Self::open(port, &format!("GET {path}"), "", token).await
    }

    /// A connection that sends `POST path` without a body.
    pub(crate) async fn post(port: u16, path: &str, token: &str) -> anyhow::Result<Self> {
        Self::open(
            port,
            &format!("POST {path}"),
            "Content-Length: 0\r\n",
            token,
        )
        .await
    }

    async fn open(port: u16, line: &str, headers: &str, token: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "{line} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n{headers}\r\n"
        )
        .into_bytes();
        Ok(Self {
            stream,
            request,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends the request and reads the whole response; fails unless the status is 2xx.
    pub(crate) async fn send(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.request).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?;
        if !head.starts_with("HTTP/1.1 2") {
            bail!("{}", head.lines().next().unwrap_or_default());
        }
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .context("no content-length")?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        Ok(())
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
