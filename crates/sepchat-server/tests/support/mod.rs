//! What the server's integration tests share: the real server on an ephemeral loopback port over a real App in a
//! temporary data directory, the default model's path, and a reader of server-sent events.

// Each test binary includes this module and may use only part of it.
#![allow(dead_code)]

use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Response, StatusCode};
use sepchat_core::api::LoadModelRequest;
use sepchat_core::App;
use sepchat_server::{Server, ServerConfig};
use serde_json::Value;

pub struct TestServer {
    _dir: tempfile::TempDir,
    pub base: String,
    pub client: Client,
}

impl TestServer {
    pub async fn start(with_model: bool, config: ServerConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = App::open(dir.path()).await.expect("open the app");
        if with_model {
            let request =
                LoadModelRequest { path: Some(default_model()), device: Some("cpu".into()), ..Default::default() };
            app.load_model(request).await.expect("load the default model");
        }
        let server = Server::bind(app, ServerConfig { port: Some(0), ..config }).await.expect("bind");
        let base = format!("http://{}", server.local_addr());
        tokio::spawn(server.run(std::future::pending()));
        TestServer { _dir: dir, base, client: Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn rpc(&self, method: &str, body: Value) -> Response {
        self.client.post(self.url(&format!("/rpc/{method}"))).json(&body).send().await.expect("send the request")
    }

    /// A method that must succeed, its answer parsed.
    pub async fn call<T: serde::de::DeserializeOwned>(&self, method: &str, body: Value) -> T {
        let response = self.rpc(method, body).await;
        let status = response.status();
        let text = response.text().await.expect("read the body");
        assert_eq!(status, StatusCode::OK, "{method}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{method}: {error}: {text}"))
    }
}

/// The default model's path; a missing file fails the test with what to run (never a skip).
pub fn default_model() -> String {
    let path = sepchat_gguf::default_model::default_model_path().expect("no home directory for the default model");
    assert!(path.is_file(), "the default model is missing at {}: run `make fetch-model` first", path.display());
    path.to_string_lossy().into_owned()
}

/// One server-sent event: its `event:` name (`message` when absent) and its `data:`.
#[derive(Debug)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

/// Reads server-sent events from a response as they arrive.
pub struct SseReader {
    response: Response,
    /// Bytes, not text: a chunk may end inside a UTF-8 character.
    buffer: Vec<u8>,
}

impl SseReader {
    pub fn new(response: Response) -> SseReader {
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok());
        assert_eq!(content_type, Some("text/event-stream"));
        SseReader { response, buffer: Vec::new() }
    }

    /// The next event (comments skipped); `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
                let frame: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let frame = String::from_utf8(frame).expect("utf-8 events");
                let mut event = SseEvent { name: "message".into(), data: String::new() };
                let mut has_data = false;
                for line in frame.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event.name = name.trim().to_string();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(data.strip_prefix(' ').unwrap_or(data));
                        has_data = true;
                    }
                }
                if has_data {
                    return Some(event);
                }
            }
            let chunk = self.response.chunk().await.expect("read the event stream")?;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next event's `data:` alone.
    pub async fn next_data(&mut self) -> Option<String> {
        self.next().await.map(|event| event.data)
    }
}
