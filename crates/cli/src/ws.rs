//! Following a build through the stream gateway's WebSocket, resuming from the last line
//! received when the gateway cuts the connection (slow terminal, gateway restart).

use std::io::Write;

use anyhow::{bail, Context};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// Most reconnects before giving up on the gateway.
const MAX_RESUMES: u32 = 20;

/// Prints the build's output until its end message and returns its final status.
pub(crate) fn follow(
    gateway: &str,
    token: Option<&str>,
    job: &str,
    n: u64,
) -> anyhow::Result<String> {
    let mut from = 0u64;
    let mut out = std::io::stdout();
    for _ in 0..MAX_RESUMES {
        let url = format!(
            "{}/ws/builds/{job}/{n}?from={from}",
            gateway.trim_end_matches('/')
        );
        let mut req = url
            .as_str()
            .into_client_request()
            .context("invalid gateway URL")?;
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().context("invalid token")?,
            );
        }
        let (mut ws, _) =
            tungstenite::connect(req).with_context(|| format!("cannot connect to {gateway}"))?;
        loop {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value =
                        serde_json::from_str(&t).context("unreadable gateway message")?;
                    match v["type"].as_str() {
                        Some("lines") => {
                            for l in v["lines"].as_array().into_iter().flatten() {
                                writeln!(out, "{}", l["line"].as_str().unwrap_or_default())?;
                                from = l["seq"].as_u64().unwrap_or(from);
                            }
                            out.flush()?;
                        }
                        Some("attempt") => {
                            from = 0;
                            writeln!(out, "--- retrying: attempt {} ---", v["attempt"])?;
                        }
                        Some("end") => {
                            let _ = ws.close(None);
                            return Ok(v["status"].as_str().unwrap_or("unknown").to_owned());
                        }
                        _ => {}
                    }
                }
                Ok(Message::Close(frame)) => {
                    let reason = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    match reason {
                        Some((4404, r)) => bail!("{r}"),
                        // Cut off or gateway restarting: resume after the last line printed.
                        _ => break,
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    bail!("the gateway kept closing the stream")
}
