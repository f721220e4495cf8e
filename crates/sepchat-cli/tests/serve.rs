//! Black-box tests of `sepchat serve`: the real binary on an ephemeral port, with its own history directory, spoken
//! to over plain HTTP. Needs the default model (fails, never skips, without it).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::{assert_success, default_model, run, sepchat, TIMEOUT};

/// How long the server may take to exit after a signal: its shutdown grace (5 s) and a margin for a slow machine.
const EXIT_LIMIT: Duration = Duration::from_secs(15);

/// A running `sepchat serve`, killed if the test ends without it having exited.
struct Served {
    child: Child,
    /// `127.0.0.1:<port>`
    address: String,
    stderr: thread::JoinHandle<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data_dir: &Path) -> Served {
    default_model();
    let mut child = sepchat()
        .env("SEPCHAT_DATA_DIR", data_dir)
        .args(["serve", "--port", "0", "--ui-dir"])
        .arg(data_dir.join("no-ui"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sepchat serve");
    let stdout = child.stdout.take().expect("stdout was piped");
    let mut stderr_pipe = child.stderr.take().expect("stderr was piped");
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver.recv_timeout(Duration::from_secs(120)).expect("sepchat serve prints its URL");
    let address = line
        .trim()
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("not a URL on stdout: {line:?}"))
        .to_string();
    Served { child, address, stderr }
}

/// Sends a JSON POST and returns the open connection, the response not read yet.
fn post(address: &str, path: &str, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send the request");
    stream
}

/// The JSON body of a small, whole response.
fn post_json(address: &str, path: &str, body: &str) -> serde_json::Value {
    let mut response = String::new();
    post(address, path, body).read_to_string(&mut response).expect("read the response");
    assert!(response.starts_with("HTTP/1.1 200 "), "{path}: {response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("a body");
    serde_json::from_str(body).unwrap_or_else(|error| panic!("{path}: {error}: {body}"))
}

fn wait_for_exit(served: &mut Served, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = served.child.try_wait().expect("wait for sepchat serve") {
            return status;
        }
        assert!(Instant::now() < deadline, "sepchat serve did not exit within {limit:?} of the signal");
        thread::sleep(Duration::from_millis(50));
    }
}

fn signal(served: &Served, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &served.child.id().to_string()]).status();
    assert!(status.expect("run kill").success(), "kill -{name} failed");
}

/// Ctrl-C while a reply streams: the server stops it, stores it `stopped` with its text, ends the stream, and
/// exits 0 within its grace.
#[test]
fn an_interrupt_stops_and_stores_the_reply_then_exits_cleanly() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut served = serve(data.path());
    // A high temperature practically never samples the end-of-turn token: the reply would run for minutes.
    let sampling = r#"{"temperature": 2.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "max_tokens": 4000}"#;
    let conversation =
        post_json(&served.address, "/rpc/create_conversation", &format!(r#"{{"sampling": {sampling}}}"#));
    let id = conversation["id"].as_i64().expect("a conversation id");
    let body = format!(r#"{{"conversation_id": {id}, "text": "Write a very long story about a dragon."}}"#);
    let mut stream = post(&served.address, "/rpc/send_message", &body);

    // Read until a few tokens have streamed.
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while String::from_utf8_lossy(&received).matches("\"type\":\"token\"").count() < 3 {
        let read = stream.read(&mut buffer).expect("read the event stream");
        assert!(read > 0, "the stream ended early: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buffer[..read]);
    }

    let signalled = Instant::now();
    signal(&served, "INT");
    // The stream ends with the stored reply as its result.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read the rest of the stream");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("event: result"), "the stream did not end with its result: {rest}");
    assert!(rest.contains(r#""status":"stopped""#), "{rest}");

    let status = wait_for_exit(&mut served, EXIT_LIMIT);
    let elapsed = signalled.elapsed();
    let stderr = std::mem::replace(&mut served.stderr, thread::spawn(String::new)).join().expect("stderr reader");
    assert_eq!(status.code(), Some(0), "exit status {status}; stderr: {stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    eprintln!("exited {elapsed:?} after SIGINT");

    // What the next start finds: the reply `stopped` (not `streaming`, which a start turns into `interrupted`).
    let show = run(sepchat().env("SEPCHAT_DATA_DIR", data.path()).args(["show", "--json", &id.to_string()]), TIMEOUT);
    assert_success(&show, "show");
    let view: serde_json::Value = serde_json::from_str(&show.stdout).expect("show --json");
    let reply = view["branch"].as_array().and_then(|branch| branch.last()).expect("the reply");
    assert_eq!(reply["role"], "assistant");
    assert_eq!(reply["status"], "stopped", "{reply}");
    assert!(reply["content"].as_str().is_some_and(|text| !text.trim().is_empty()), "{reply}");
}

/// SIGTERM (what service managers send) shuts down the same way; with nothing running it is quick.
#[test]
fn sigterm_exits_cleanly() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut served = serve(data.path());
    let listed = post_json(&served.address, "/rpc/list_conversations", "{}");
    assert_eq!(listed, serde_json::json!([]));
    signal(&served, "TERM");
    let status = wait_for_exit(&mut served, EXIT_LIMIT);
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(TcpStream::connect(&served.address).is_err(), "the port is closed");
}
