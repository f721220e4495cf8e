//! The OpenAI-compatible API on the real server (ephemeral loopback port, real App in a temporary directory, real
//! default model), spoken to over HTTP as OpenAI's clients do, and by the `openai` Python package itself. Tests
//! that need the model or the Python package fail (never skip) without them.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use sepchat_core::api::{ConversationInfo, SendResult};
use sepchat_server::{ApiToken, ServerConfig};
use serde_json::{json, Value};

mod support;
use support::{default_model, SseReader, TestServer};

const TOKEN: &str = "test-token-0123456789abcdef";
const MODEL_ID: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// PRODUCT.md: with this system prompt the default model's greedy answer is "The capital of France is Paris."
const PLAIN_SYSTEM_PROMPT: &str = "You are a helpful assistant";
const FRANCE: &str = "What is the capital of France?";

impl TestServer {
    /// With the API on, behind [`TOKEN`].
    async fn with_api(with_model: bool) -> TestServer {
        TestServer::start(with_model, api_config()).await
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path)).header(AUTHORIZATION, format!("Bearer {TOKEN}"))
    }

    fn post(&self, path: &str, body: &Value) -> RequestBuilder {
        self.client.post(self.url(path)).header(AUTHORIZATION, format!("Bearer {TOKEN}")).json(body)
    }

    async fn completion(&self, body: Value) -> Value {
        let response = self.post("/v1/chat/completions", &body).send().await.expect("send");
        let status = response.status();
        let text = response.text().await.expect("read the body");
        assert_eq!(status, StatusCode::OK, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
    }

    /// The chunks of a streamed completion, `[DONE]` checked and left out.
    async fn streamed(&self, mut body: Value) -> Vec<Value> {
        body["stream"] = json!(true);
        let response = self.post("/v1/chat/completions", &body).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        let mut events = SseReader::new(response);
        let mut chunks = Vec::new();
        let mut done = false;
        while let Some(data) = events.next_data().await {
            assert!(!done, "nothing may follow [DONE]: {data}");
            if data == "[DONE]" {
                done = true;
            } else {
                chunks.push(serde_json::from_str(&data).unwrap_or_else(|error| panic!("{error}: {data}")));
            }
        }
        assert!(done, "the stream ends with [DONE]");
        chunks
    }
}

fn api_config() -> ServerConfig {
    ServerConfig { api: Some(ApiToken::new(TOKEN).expect("a valid token")), ..ServerConfig::default() }
}

fn chat(system: &str, user: &str, max_tokens: u64) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

async fn error_of(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("a JSON error");
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|message| !message.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("code").is_some(), "{body}");
    error.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_does_not_exist_without_the_api() {
    let server = TestServer::start(false, ServerConfig::default()).await;
    let models = server.get("/v1/models").send().await.expect("send");
    assert_eq!(models.status(), StatusCode::NOT_FOUND);
    let completion = server.post("/v1/chat/completions", &chat("s", "hi", 4)).send().await.expect("send");
    assert_eq!(completion.status(), StatusCode::NOT_FOUND);
    // The rest of the server is unchanged.
    let health = server.client.get(server.url("/api/health")).send().await.expect("send");
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_request_needs_the_token_and_passes_the_guard() {
    let server = TestServer::with_api(false).await;
    let models = server.url("/v1/models");

    let missing = server.client.get(&models).send().await.expect("send");
    assert!(missing.headers().get(WWW_AUTHENTICATE).is_some_and(|value| value == "Bearer"));
    let error = error_of(missing, StatusCode::UNAUTHORIZED).await;
    assert_eq!(error["code"], "invalid_api_key");
    let wrong = server.client.get(&models).bearer_auth(format!("{TOKEN}x")).send().await.expect("send");
    error_of(wrong, StatusCode::UNAUTHORIZED).await;
    let prefix = server.client.get(&models).bearer_auth(&TOKEN[..TOKEN.len() - 1]).send().await.expect("send");
    error_of(prefix, StatusCode::UNAUTHORIZED).await;
    let basic = server.client.get(&models).header(AUTHORIZATION, format!("Basic {TOKEN}")).send().await;
    error_of(basic.expect("send"), StatusCode::UNAUTHORIZED).await;
    let post = server.client.post(server.url("/v1/chat/completions")).json(&chat("s", "hi", 4)).send().await;
    error_of(post.expect("send"), StatusCode::UNAUTHORIZED).await;
    // Without the token, not even whether an endpoint exists is told.
    let unknown = server.client.get(server.url("/v1/files")).send().await.expect("send");
    error_of(unknown, StatusCode::UNAUTHORIZED).await;
    let unknown = server.get("/v1/files").send().await.expect("send");
    error_of(unknown, StatusCode::NOT_FOUND).await;

    // With the token: no model loaded yet, so an empty list, and a completion says why it cannot run.
    let listed: Value = server.get("/v1/models").send().await.expect("send").json().await.expect("json");
    assert_eq!(listed, json!({"object": "list", "data": []}));
    let no_model = server.post("/v1/chat/completions", &chat("s", "hi", 4)).send().await.expect("send");
    error_of(no_model, StatusCode::SERVICE_UNAVAILABLE).await;

    // The guard still applies, its refusals in OpenAI's format here.
    let foreign = server.get("/v1/models").header(ORIGIN, "http://evil.example").send().await.expect("send");
    error_of(foreign, StatusCode::FORBIDDEN).await;
    let rebound = server.get("/v1/models").header(HOST, "evil.example").send().await.expect("send");
    error_of(rebound, StatusCode::MISDIRECTED_REQUEST).await;
    let plain = server
        .client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .header(CONTENT_TYPE, "text/plain")
        .body(chat("s", "hi", 4).to_string())
        .send()
        .await
        .expect("send");
    error_of(plain, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let malformed = server
        .client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .header(CONTENT_TYPE, "application/json")
        .body("{\"messages\": ")
        .send()
        .await
        .expect("send");
    assert!(malformed.status().is_client_error());
    assert!(malformed.json::<Value>().await.expect("json")["error"]["message"].is_string());
    let image = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
    let refused = server.post("/v1/chat/completions", &image).send().await.expect("send");
    error_of(refused, StatusCode::BAD_REQUEST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_greedy_completions_streamed_or_not() {
    let server = TestServer::with_api(true).await;
    let listed: Value = server.get("/v1/models").send().await.expect("send").json().await.expect("json");
    assert_eq!(listed["object"], "list");
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["data"][0]["id"], MODEL_ID);
    assert_eq!(listed["data"][0]["object"], "model");
    let one: Value =
        server.get(&format!("/v1/models/{MODEL_ID}")).send().await.expect("send").json().await.expect("json");
    assert_eq!(one["id"], MODEL_ID);
    error_of(server.get("/v1/models/gpt-4").send().await.expect("send"), StatusCode::NOT_FOUND).await;

    let whole = server.completion(chat(PLAIN_SYSTEM_PROMPT, FRANCE, 48)).await;
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")), "{whole}");
    assert_eq!(whole["model"], MODEL_ID);
    let choice = &whole["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().expect("content").to_string();
    assert!(content.contains("Paris"), "{content}");
    let usage = &whole["usage"];
    let prompt_tokens = usage["prompt_tokens"].as_u64().expect("prompt tokens");
    let completion_tokens = usage["completion_tokens"].as_u64().expect("completion tokens");
    assert!(prompt_tokens > 10 && completion_tokens > 2, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64(), Some(prompt_tokens + completion_tokens));

    // The same exchange as a stored conversation, through the App's own chat path, answers the same.
    let greedy =
        json!({"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "max_tokens": 48});
    let created = server
        .client
        .post(server.url("/rpc/create_conversation"))
        .json(&json!({"system_prompt": PLAIN_SYSTEM_PROMPT, "sampling": greedy}))
        .send()
        .await
        .expect("send");
    let conversation: ConversationInfo = created.json().await.expect("a conversation");
    let sent = server
        .client
        .post(server.url("/rpc/send_message"))
        .json(&json!({"conversation_id": conversation.id, "text": FRANCE}))
        .send()
        .await
        .expect("send");
    let body = sent.text().await.expect("events");
    let result = body.split("event: result\ndata: ").nth(1).expect("a result event").trim();
    let result: SendResult = serde_json::from_str(result).expect("a SendResult");
    assert_eq!(result.message.content.trim(), content.trim());

    // Streamed: the role first, then the text in pieces, then the finish reason; the same text.
    let mut streamed_request = chat(PLAIN_SYSTEM_PROMPT, FRANCE, 48);
    streamed_request["stream_options"] = json!({"include_usage": true});
    let chunks = server.streamed(streamed_request).await;
    assert!(chunks.len() >= 4, "{chunks:?}");
    let id = chunks[0]["id"].clone();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["model"], MODEL_ID);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (usage_chunk, chunks) = chunks.split_last().expect("chunks");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"].as_u64(), Some(completion_tokens));
    let (last, pieces) = chunks.split_last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    let mut text = String::new();
    for chunk in pieces {
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        text.push_str(chunk["choices"][0]["delta"]["content"].as_str().expect("content"));
    }
    assert!(pieces.len() > 2, "the text streams in pieces");
    assert_eq!(text, content);

    // Stop sequences cut the reply before them, streamed or not.
    let mut stopped = chat(PLAIN_SYSTEM_PROMPT, FRANCE, 48);
    stopped["stop"] = json!(["Paris", "never appears"]);
    let cut = server.completion(stopped.clone()).await;
    let cut_text = cut["choices"][0]["message"]["content"].as_str().expect("content");
    assert_eq!(cut_text, &content[..content.find("Paris").expect("Paris")]);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    let cut_chunks = server.streamed(stopped).await;
    let cut_streamed: String =
        cut_chunks.iter().filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(cut_streamed, cut_text);

    // A length limit is reported as such.
    let short = server.completion(chat(PLAIN_SYSTEM_PROMPT, FRANCE, 3)).await;
    assert_eq!(short["choices"][0]["finish_reason"], "length");
    assert_eq!(short["usage"]["completion_tokens"], 3);
}

/// An independent reference: llama.cpp's greedy continuation of the same chat (tests/golden), which the engine
/// matches for the raw prompt. Here the prompt is rendered from OpenAI-style messages by the model's template.
/// The golden comes from llama.cpp's flash-attention kernel, so the model is loaded (over the RPC, which checks the
/// field on the wire too) with `attention: "llama-cpp"`; the default fast attention can take the other token of a
/// near-tie, as llama.cpp itself does without flash attention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greedy_completion_matches_llama_cpp() {
    let golden_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/llama-cpp-greedy.json");
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(&golden_path).expect("read the llama.cpp golden")).expect("json");
    let case = &golden["cases"][1];
    let prompt = case["prompt"].as_str().expect("prompt");
    let system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
    let user = "Write a short poem about the sea.";
    assert!(prompt.contains(system) && prompt.contains(user), "the golden case changed: {prompt}");
    let steps = golden["steps"].as_u64().expect("steps");

    let server = TestServer::with_api(true).await;
    let request = json!({"path": default_model(), "device": "cpu", "attention": "llama-cpp"});
    let _: Value = server.call("load_model", request).await;
    let unknown = server.rpc("load_model", json!({"path": default_model(), "attention": "fastest"})).await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST, "an unknown arithmetic is refused");
    let body = chat(system, user, steps);
    let answer = server.completion(body.clone()).await;
    assert_eq!(answer["choices"][0]["message"]["content"], case["text"]);
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(answer["usage"]["completion_tokens"].as_u64(), Some(steps));
    // Text parts are the same message.
    let mut parts = body;
    parts["messages"][1]["content"] = json!([{"type": "text", "text": user}]);
    let again = server.completion(parts).await;
    assert_eq!(again["choices"][0]["message"]["content"], case["text"]);
}

/// A request that samples at a high temperature: practically never an end-of-turn token, so it runs to its limit
/// (minutes on a test machine) unless stopped.
fn endless() -> Value {
    json!({
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "temperature": 2.0,
        "top_p": 1.0,
        "max_tokens": 4000,
        "stream": true,
    })
}

/// Polls until a one-token completion is answered within `limit`, which needs an earlier generation's permit back
/// and then its turn: both only come soon if every earlier generation was stopped.
async fn answered_within(server: &TestServer, limit: Duration) {
    let deadline = Instant::now() + limit;
    let probe = chat(PLAIN_SYSTEM_PROMPT, "hi", 1);
    loop {
        let send = server.post("/v1/chat/completions", &probe).send();
        let response = tokio::time::timeout_at(deadline.into(), send)
            .await
            .expect("the abandoned generations were not stopped: the probe waited past the limit")
            .expect("send");
        if response.status() == StatusCode::OK {
            return;
        }
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().contains_key("retry-after"));
        assert!(Instant::now() < deadline, "the abandoned generations were not stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_stop_their_generations_even_while_queued() {
    let server = TestServer::start(true, ServerConfig { max_generations: 2, ..api_config() }).await;
    let running = server.post("/v1/chat/completions", &endless()).send().await.expect("send");
    assert_eq!(running.status(), StatusCode::OK);
    let mut running = SseReader::new(running);
    for _ in 0..4 {
        running.next_data().await.expect("the stream goes on");
    }

    // A second one waits for its turn (no event yet); its client leaves while it waits.
    let queued = tokio::spawn({
        let request = server.post("/v1/chat/completions", &endless());
        async move { request.send().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let full = server.post("/v1/chat/completions", &chat(PLAIN_SYSTEM_PROMPT, "hi", 1)).send().await.expect("send");
    let error = error_of(full, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(error["code"], "rate_limit_exceeded");
    queued.abort();
    let _ = queued.await;

    drop(running);
    // Both permits come back only if both generations were stopped (each would otherwise run 4000 tokens).
    answered_within(&server, Duration::from_secs(30)).await;
}

/// The `openai` Python package, as users run it, against this server: `scripts/python-venv.sh` (run by
/// `make test`) installs it and the Makefile names its interpreter in SEPCHAT_TEST_PYTHON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_package_works_against_the_server() {
    let python = std::env::var_os("SEPCHAT_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "SEPCHAT_TEST_PYTHON is not set: run `make test`, or set it to the interpreter \
             `scripts/python-venv.sh` prints (it installs the openai package)"
        )
    });
    assert!(
        python.is_file(),
        "SEPCHAT_TEST_PYTHON={} does not exist: run `scripts/python-venv.sh` (or `make test`)",
        python.display()
    );
    let server = TestServer::with_api(true).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let base_url = server.url("/v1");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .env("SEPCHAT_API_BASE", base_url)
            .env("SEPCHAT_API_TOKEN", TOKEN)
            .env("SEPCHAT_MODEL_ID", MODEL_ID)
            // The client must reach loopback directly, whatever proxy the environment names.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .output()
    })
    .await
    .expect("join")
    .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the openai client failed:\nstdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("all checks passed"), "stdout: {stdout}\nstderr: {stderr}");
}
