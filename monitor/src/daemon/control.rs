//! The control channel: a Unix socket (mode 0600, root only) that takes one JSON request per
//! connection and answers with one JSON line. Used by `monitor indicators` and `monitor status`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::Path,
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

use crate::cli::{ControlArgs, IndicatorOp, IndicatorsArgs, ListArg};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status,
    Add { list: String, values: Vec<String> },
    Remove { list: String, values: Vec<String> },
    List { list: Option<String> },
}

pub struct Call {
    pub request: Request,
    pub peer_uid: u32,
    pub reply: oneshot::Sender<Value>,
}

/// Bind the socket (replacing a stale one) with 0600 permissions.
pub fn bind(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("another monitor daemon is running (its control socket {} answers)", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("remove stale control socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("bind control socket {}", path.display()))?;
    listener.set_nonblocking(true).context("control socket non-blocking")?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Accept connections and hand each request to the daemon's loop.
pub async fn serve(listener: std::os::unix::net::UnixListener, calls: mpsc::Sender<Call>) {
    let Ok(listener) = UnixListener::from_std(listener) else { return };
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let calls = calls.clone();
        tokio::spawn(async move {
            let peer_uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read);
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), reader.read_line(&mut line)).await;
            let answer = match read {
                Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                    Ok(request) => {
                        let (reply, answer) = oneshot::channel();
                        if calls.send(Call { request, peer_uid, reply }).await.is_err() {
                            return;
                        }
                        answer.await.unwrap_or_else(|_| error("the daemon is stopping"))
                    }
                    Err(e) => error(&format!("bad request: {e}")),
                },
                _ => error("no request received"),
            };
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

pub fn error(message: &str) -> Value {
    serde_json::json!({ "ok": false, "error": message })
}

fn call(path: &Path, request: &Request) -> anyhow::Result<Value> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "connect to the daemon's control socket {} (is `monitor run` running, and are you root?)",
            path.display()
        )
    })?;
    let line = serde_json::to_string(request).context("encode request")?;
    stream.write_all(format!("{line}\n").as_bytes()).context("send request")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).context("read answer")?;
    let value: Value = serde_json::from_str(&answer).context("decode answer")?;
    if value["ok"] != Value::Bool(true) {
        bail!("{}", value["error"].as_str().unwrap_or("the daemon refused"));
    }
    Ok(value)
}

fn list_name(list: ListArg) -> String {
    match list {
        ListArg::Allow => "allow".into(),
        ListArg::Block => "block".into(),
    }
}

pub fn indicators(args: IndicatorsArgs) -> anyhow::Result<ExitCode> {
    let request = match args.op {
        IndicatorOp::Add { list, values } => Request::Add { list: list_name(list), values },
        IndicatorOp::Remove { list, values } => Request::Remove { list: list_name(list), values },
        IndicatorOp::List { list } => Request::List { list: list.map(list_name) },
    };
    let answer = call(&args.control, &request)?;
    match request {
        Request::List { .. } => {
            for (list, entries) in answer["lists"].as_object().into_iter().flatten() {
                for entry in entries.as_array().into_iter().flatten() {
                    println!("{list}\t{}", entry.as_str().unwrap_or_default());
                }
            }
        }
        _ => println!("{}", answer["message"].as_str().unwrap_or("done")),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: ControlArgs) -> anyhow::Result<ExitCode> {
    let answer = call(&args.control, &Request::Status)?;
    println!("{}", serde_json::to_string_pretty(&answer["status"]).context("format status")?);
    Ok(ExitCode::SUCCESS)
}
