//! The network a policy allows a guarded agent: nothing is routed out of its sandbox, so the
//! only ways out are the ones the guard opens, on the sandbox's loopback, from sockets the
//! guard holds (nothing inside can signal or reconfigure them):
//! - forwards: a loopback port inside relayed to one host address outside (a model server);
//! - an HTTP CONNECT proxy (`HTTPS_PROXY` inside) that connects only to allowed `host:port`
//!   destinations and refuses the rest with 403.
//!
//! Every connection through either is reported to the session (for the audit log).

use std::sync::Arc;
use std::time::Duration;

use offswitch_sandbox::Sandbox;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The proxy's port on the sandbox's loopback.
pub const PROXY_PORT: u16 = 3128;
/// Bytes of a CONNECT request head read at most.
const MAX_HEAD: usize = 8192;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to connect to a destination.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// One connection through the guard's network, for the audit log.
#[derive(Debug, Clone)]
pub struct NetRecord {
    /// `forward` or `proxy`.
    pub via: &'static str,
    pub destination: String,
    pub allowed: bool,
    pub detail: String,
}

/// Listen inside the sandbox's network on `127.0.0.1:port`, with a socket this process holds.
fn listen_inside(sandbox: &Sandbox, port: u16) -> Result<TcpListener, String> {
    let listener = sandbox
        .in_network(|| std::net::TcpListener::bind(("127.0.0.1", port)))
        .map_err(|e| format!("entering the sandbox's network: {e}"))?
        .map_err(|e| format!("listening on 127.0.0.1:{port} inside: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listening on 127.0.0.1:{port} inside: {e}"))?;
    TcpListener::from_std(listener).map_err(|e| format!("listening on 127.0.0.1:{port}: {e}"))
}

/// Start the forwards and, when destinations are allowed, the proxy. Runs until the runtime
/// drops the tasks (the session's end).
pub fn start(
    sandbox: &Arc<Sandbox>,
    forward: &[(u16, String)],
    allow: &[String],
    records: mpsc::UnboundedSender<NetRecord>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    for (port, outside) in forward {
        let listener = listen_inside(sandbox, *port)?;
        let outside = outside.clone();
        let records = records.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((inside, _)) = listener.accept().await {
                let outside = outside.clone();
                let records = records.clone();
                tokio::spawn(async move {
                    let connected =
                        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&outside)).await;
                    let (allowed, detail) = match connected {
                        Ok(Ok(upstream)) => {
                            relay(inside, upstream).await;
                            (true, "relayed".to_owned())
                        }
                        Ok(Err(e)) => (true, format!("the destination refused: {e}")),
                        Err(_) => (true, "the destination did not answer".to_owned()),
                    };
                    let _ = records.send(NetRecord {
                        via: "forward",
                        destination: outside,
                        allowed,
                        detail,
                    });
                });
            }
        }));
    }
    if !allow.is_empty() {
        let listener = listen_inside(sandbox, PROXY_PORT)?;
        let allow: Arc<Vec<String>> = Arc::new(allow.to_vec());
        tasks.push(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let allow = Arc::clone(&allow);
                let records = records.clone();
                tokio::spawn(async move {
                    if let Some(record) = proxy(client, &allow).await {
                        let _ = records.send(record);
                    }
                });
            }
        }));
    }
    Ok(tasks)
}

/// One proxy client: read `CONNECT host:port HTTP/1.1`, refuse what is not allowed, relay
/// what is.
async fn proxy(mut client: TcpStream, allow: &[String]) -> Option<NetRecord> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(head)) => head,
        _ => return None,
    };
    let first = head.lines().next().unwrap_or_default().to_owned();
    let mut words = first.split_whitespace();
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let tunnel = method.eq_ignore_ascii_case("CONNECT");
    // A plain-HTTP request through the proxy names its destination in absolute form.
    let destination = if tunnel {
        Some(target.to_lowercase())
    } else {
        absolute_form_destination(target)
    };
    let Some(destination) = destination else {
        let _ = client
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        return Some(NetRecord {
            via: "proxy",
            destination: target.chars().take(256).collect(),
            allowed: false,
            detail: format!(
                "refused {}: neither CONNECT nor a request for an http:// URL",
                method.chars().take(16).collect::<String>()
            ),
        });
    };
    if !allow.contains(&destination) {
        let _ = client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return Some(NetRecord {
            via: "proxy",
            destination: destination.chars().take(256).collect(),
            allowed: false,
            detail: "not an allowed destination".into(),
        });
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&destination)).await {
        Ok(Ok(mut upstream)) => {
            let sent = if tunnel {
                client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
            } else {
                // The request as the client wrote it (servers accept the absolute form).
                upstream.write_all(head.as_bytes()).await
            };
            if sent.is_err() {
                return None;
            }
            relay(client, upstream).await;
            Some(NetRecord {
                via: "proxy",
                destination,
                allowed: true,
                detail: if tunnel {
                    "tunnelled"
                } else {
                    "forwarded an http request"
                }
                .into(),
            })
        }
        Ok(Err(error)) => {
            let _ = client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                .await;
            Some(NetRecord {
                via: "proxy",
                destination,
                allowed: true,
                detail: format!("the destination refused: {error}"),
            })
        }
        Err(_) => {
            let _ = client
                .write_all(b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\n\r\n")
                .await;
            Some(NetRecord {
                via: "proxy",
                destination,
                allowed: true,
                detail: "the destination did not answer".into(),
            })
        }
    }
}

/// `host:port` of an absolute-form `http://host[:port]/...` request target.
fn absolute_form_destination(target: &str) -> Option<String> {
    let rest = target
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .map(|_| &target[7..])?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?.to_lowercase();
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(':') {
        Some(colon) => !authority[colon..].contains(']'),
        None => false,
    };
    Some(if has_port {
        authority
    } else {
        format!("{authority}:80")
    })
}

async fn read_head(client: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_HEAD || client.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("no complete request head"));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn relay(mut a: TcpStream, mut b: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}
