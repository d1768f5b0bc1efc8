//! The stream gateway with a real worker, a real redis-server and real WebSocket clients.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use support::{job, Cluster, WorkerOpts, PERSISTENT, TOKEN};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(60);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket connects");
    ws
}

/// What a build stream delivered: stdout lines with their seq, the end status, the close.
#[derive(Debug, Default)]
struct Received {
    seqs: Vec<u64>,
    stdout: Vec<String>,
    end: Option<String>,
    close: Option<(u16, String)>,
}

/// A client whose socket receive buffer is small and fixed (no autotuning), so the
/// gateway's send side fills up as soon as it stops reading.
async fn connect_small_buffer(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let host = req.uri().host().unwrap().to_owned();
    let port = req.uri().port_u16().unwrap();
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    tokio_tungstenite::client_async(req, stream)
        .await
        .unwrap()
        .0
}

async fn read_build<S>(mut ws: tokio_tungstenite::WebSocketStream<S>) -> Received
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut r = Received::default();
    let read = async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    match v["type"].as_str().unwrap() {
                        "lines" => {
                            for l in v["lines"].as_array().unwrap() {
                                r.seqs.push(l["seq"].as_u64().unwrap());
                                if l["stream"] == "stdout" {
                                    r.stdout.push(l["line"].as_str().unwrap().to_owned());
                                }
                            }
                        }
                        "end" => r.end = v["status"].as_str().map(str::to_owned),
                        _ => {}
                    }
                }
                Ok(Message::Close(c)) => {
                    r.close = c.map(|c| (u16::from(c.code), c.reason.to_string()));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    r.close = Some((0, format!("error: {e}")));
                    break;
                }
            }
        }
    };
    tokio::time::timeout(T, read)
        .await
        .expect("stream ended in time");
    r
}

fn assert_complete(r: &Received, expected: &[String]) {
    let first_difference = r.stdout.iter().zip(expected).position(|(a, b)| a != b);
    assert!(
        r.stdout.len() == expected.len() && first_difference.is_none(),
        "every line exactly once, in order: got {} of {} lines, first difference at {first_difference:?}, close {:?}",
        r.stdout.len(),
        expected.len(),
        r.close
    );
    for w in r.seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "no gap, no duplicate");
    }
    assert_eq!(r.end.as_deref(), Some("success"));
    assert_eq!(r.close.as_ref().map(|c| c.0), Some(1000));
}

fn numbered(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("line-{i}")).collect()
}

#[tokio::test]
async fn a_late_watcher_gets_every_line_exactly_once_in_order() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let (_g, gw) = c.gateway().await;
    c.apply(
        "chatty",
        job(&["for i in $(seq 1 300); do echo line-$i; sleep 0.005; done"]),
    )
    .await;
    let n = c.trigger("chatty").await;
    c.wait_log_contains("chatty", n, "line-50", T).await;
    let r = read_build(connect(&format!("{gw}/ws/builds/chatty/{n}")).await).await;
    assert_complete(&r, &numbered(300));
    // A finished build replays from the file and ends at once.
    let again = read_build(connect(&format!("{gw}/ws/builds/chatty/{n}")).await).await;
    assert_complete(&again, &numbered(300));
    // Resuming after line 100 sends only what follows.
    let resumed = read_build(connect(&format!("{gw}/ws/builds/chatty/{n}?from=100")).await).await;
    assert_eq!(
        resumed.stdout.first().map(String::as_str),
        Some("line-100"),
        "seq 1 is the step header"
    );
    assert_eq!(resumed.seqs.first(), Some(&101));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_all_receive_the_complete_log_over_one_subscription() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let (_g, gw) = c.gateway().await;
    c.apply(
        "wide",
        job(&["sleep 1; for i in $(seq 1 10); do seq 1 200 | sed \"s/^/$i-/\"; sleep 0.05; done"]),
    )
    .await;
    let n = c.trigger("wide").await;
    let mut watchers = Vec::new();
    for _ in 0..200 {
        let ws = connect(&format!("{gw}/ws/builds/wide/{n}")).await;
        watchers.push(tokio::spawn(read_build(ws)));
    }
    let pool = c.redis.pool();
    let channel = format!("kiln:output:job_wide_{n}");
    let expected: Vec<String> = (1..=10)
        .flat_map(|i| (1..=200).map(move |j| format!("{i}-{j}")))
        .collect();
    for w in watchers {
        assert_complete(&w.await.unwrap(), &expected);
    }
    kiln_testkit::wait_for(
        "the gateway to unsubscribe after the last watcher left",
        T,
        || async {
            let mut conn = pool.get().await.ok()?;
            let v: Vec<(String, u64)> = deadpool_redis::redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .ok()?;
            (v[0].1 == 0).then_some(())
        },
    )
    .await;
}

/// At a build's end each watcher gets the end message as the worker published it, right
/// behind the last lines: the gateway reads the document once per watcher, when it joins,
/// and not again at the end (it used to, and read the log file twice more, for every
/// watcher, which held up a popular build's last lines; `make bench`, figure 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_goes_to_every_watcher_without_reading_the_build_again() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let (_g, gw) = c.gateway().await;
    let go = c.storage.path().join("go");
    // Lines keep flowing while the watchers join, so no watcher's idle poll reads the build.
    c.apply(
        "ends",
        job(&[&format!(
            "while [ ! -e {} ]; do echo waiting; sleep 0.2; done; echo last",
            go.display()
        )]),
    )
    .await;
    let n = c.trigger("ends").await;
    // Running, so lines flow from before the first watcher joins until the end.
    c.wait_log_contains("ends", n, "waiting", T).await;
    let mut watchers = Vec::new();
    for _ in 0..20 {
        let mut ws = connect(&format!("{gw}/ws/builds/ends/{n}")).await;
        // The gateway read the build for this watcher before sending it.
        let first = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        assert_eq!(first["type"], "build");
        watchers.push(tokio::spawn(read_build(ws)));
    }
    let monitor = support::Monitor::start(&c.redis_url()).await;
    std::fs::write(&go, "").unwrap();
    for w in watchers {
        let r = w.await.unwrap();
        assert_eq!(r.stdout.last().map(String::as_str), Some("last"));
        assert_eq!(r.end.as_deref(), Some("success"));
        assert_eq!(r.close.as_ref().map(|c| c.0), Some(1000));
    }
    // Every command Redis ran before this one is on the monitor once this one is.
    let mut conn = c.redis.pool().get().await.unwrap();
    let _: Option<String> = deadpool_redis::redis::AsyncCommands::get(&mut conn, "sentinel")
        .await
        .unwrap();
    let seen = monitor
        .wait_for(T, |l| l.contains(r#""GET" "sentinel""#))
        .await;
    let key = format!(r#""GET" "job_ends_{n}""#);
    let reads: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains(&key) && !l.contains("lua]"))
        .collect();
    assert!(reads.is_empty(), "the build was read again: {reads:?}");
}

#[tokio::test]
async fn watchers_lose_no_line_when_redis_restarts_mid_stream() {
    let mut c = Cluster::start_persistent().await;
    let mut opts = WorkerOpts::new("w1");
    opts.lease_ms = 10_000;
    let _w = c.worker(opts).await;
    let (_g, gw) = c.gateway().await;
    c.apply(
        "steady",
        job(&["for i in $(seq 1 400); do echo line-$i; sleep 0.01; done"]),
    )
    .await;
    let n = c.trigger("steady").await;
    let watcher = tokio::spawn(read_build(
        connect(&format!("{gw}/ws/builds/steady/{n}")).await,
    ));
    c.wait_log_contains("steady", n, "line-100", T).await;
    let metrics = gw.replacen("ws://", "http://", 1) + "/metrics";
    let reconnect_resyncs = || async {
        let text = c
            .client
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(r#"kiln_gateway_resyncs_total{cause="reconnect"}"#))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        reconnect_resyncs().await,
        0,
        "the first connection is no reconnect"
    );
    c.redis.restart(PERSISTENT);
    let r = watcher.await.unwrap();
    assert_complete(&r, &numbered(400));
    // The count follows the reconnect, which the watcher's end need not wait for.
    kiln_testkit::wait_for("the resync to show in /metrics", T, || async {
        (reconnect_resyncs().await >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_with_a_resume_position() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let (_g, gw) = c.gateway_with_send_timeout_ms(2_000).await;
    c.apply(
        "flood",
        job(&["sleep 1; for i in $(seq 1 60); do head -c 500000 /dev/zero | tr '\\0' a | fold -w 1000; echo; sleep 0.1; done"]),
    )
    .await;
    let n = c.trigger("flood").await;
    let url = format!("{gw}/ws/builds/flood/{n}");
    let slow = connect_small_buffer(&url).await;
    let fast = tokio::spawn(read_build(connect(&url).await));
    let fast = fast.await.unwrap();
    assert_eq!(fast.stdout.len(), 30_000, "the fast client is unaffected");
    assert_eq!(fast.end.as_deref(), Some("success"));
    // Now the slow client reads what was queued for it: a prefix, then a close frame.
    let r = read_build(slow).await;
    let (code, reason) = r.close.clone().expect("a close frame");
    assert_eq!(code, 4000, "{reason} after {} lines", r.stdout.len());
    let resume: u64 = reason
        .rsplit("resume_from=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        Some(&resume),
        r.seqs.last(),
        "the resume position is the last line received"
    );
    assert!(r.stdout.len() < 30_000);
    let rest = read_build(connect(&format!("{url}?from={resume}")).await).await;
    assert_eq!(
        r.stdout.len() + rest.stdout.len(),
        30_000,
        "resuming completes the log"
    );
    assert_eq!(rest.end.as_deref(), Some("success"));
}

#[tokio::test]
async fn tokens_are_required_and_unknown_builds_get_a_clear_close() {
    let c = Cluster::start().await;
    let (_g, gw) = c.gateway().await;
    let err = tokio_tungstenite::connect_async(format!("{gw}/ws/nodes"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let mut req = format!("{gw}/ws/nodes").into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        "Bearer wrong-token-0123456789".parse().unwrap(),
    );
    assert!(tokio_tungstenite::connect_async(req)
        .await
        .unwrap_err()
        .to_string()
        .contains("401"));
    let (mut ok, _) =
        tokio_tungstenite::connect_async(format!("{gw}/ws/nodes?access_token={TOKEN}"))
            .await
            .expect("a query token works for browsers");
    ok.close(None).await.unwrap();
    let r = read_build(connect(&format!("{gw}/ws/builds/nope/1")).await).await;
    let (code, reason) = r.close.unwrap();
    assert_eq!(code, 4404);
    assert!(reason.contains("unknown build"), "{reason}");
    assert_ne!(u16::from(CloseCode::Normal), code);
}

/// Bad requests get the JSON error every Kiln service answers with, naming what was wrong:
/// not actix's plain-text "Query deserialize error" or its empty 404.
#[tokio::test]
async fn bad_requests_get_the_json_error_naming_what_was_wrong() {
    let c = Cluster::start().await;
    let (_g, gw) = c.gateway().await;
    let http = gw.replacen("ws://", "http://", 1);
    let client = reqwest::Client::new();
    let cases = [
        (
            reqwest::Method::GET,
            "/ws/builds/app/1?from=x",
            400,
            "bad_request",
        ),
        (
            reqwest::Method::GET,
            "/ws/builds/app/1?from=-1",
            400,
            "bad_request",
        ),
        (reqwest::Method::GET, "/ws/nope", 404, "not_found"),
        (
            reqwest::Method::POST,
            "/ws/nodes",
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::DELETE,
            "/ws/builds/app/1",
            405,
            "method_not_allowed",
        ),
        (reqwest::Method::POST, "/healthz", 405, "method_not_allowed"),
    ];
    for (method, path, status, code) in cases {
        let r = client
            .request(method, format!("{http}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        let allow = r
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = r.json().await.expect("a JSON error body");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        if status == 400 {
            assert_eq!(body["error"]["field"], "from", "{path}: {body}");
        }
        if status == 405 {
            assert_eq!(allow.as_deref(), Some("GET"), "{path}");
        }
    }
}

#[tokio::test]
async fn nodes_and_events_stream_live() {
    let c = Cluster::start().await;
    let (_g, gw) = c.gateway().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let mut nodes = connect(&format!("{gw}/ws/nodes")).await;
    let mut events = connect(&format!("{gw}/ws/events?job=ev")).await;
    let mut other = connect(&format!("{gw}/ws/events?job=other")).await;
    let first: Value = match nodes.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        m => panic!("{m:?}"),
    };
    assert_eq!(first["type"], "nodes");
    let heartbeat = async {
        while let Some(Ok(m)) = nodes.next().await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "heartbeat" && v["node"]["id"] == "w1" {
                    return;
                }
            }
        }
        panic!("the nodes stream ended");
    };
    tokio::time::timeout(T, heartbeat)
        .await
        .expect("a heartbeat");
    c.apply("ev", job(&["true"])).await;
    let n = c.trigger("ev").await;
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("finished") {
        let m = tokio::time::timeout(T, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["event"]["number"], n);
            kinds.push(v["event"]["kind"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(kinds, ["queued", "started", "finished"]);
    let quiet = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(Ok(Message::Text(t))) = other.next().await {
                return t;
            }
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "the job filter holds back other jobs' events"
    );
}
