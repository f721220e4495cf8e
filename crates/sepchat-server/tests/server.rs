//! The real server on an ephemeral loopback port, over a real App in a temporary data directory, spoken to with a
//! real HTTP client. The refusals and the conversation routes need no model; the generation tests use the real
//! default model and fail (never skip) without it.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HOST, ORIGIN};
use reqwest::StatusCode;
use sepchat_core::api::{ConversationInfo, ConversationView, MessageStatus, SendResult};
use sepchat_server::ServerConfig;
use serde_json::{json, Value};

mod support;
use support::{SseReader, TestServer};

fn greedy(max_tokens: u64) -> Value {
    json!({"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "max_tokens": max_tokens})
}

/// Sends `head` (with `{host}` replaced by the server's address) over a plain TCP connection and returns the
/// response's head: for requests no HTTP client would send as they are.
async fn raw_response(base: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    stream.write_all(head.replace("{host}", host).as_bytes()).await.expect("write the request");
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !response.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the server answers without waiting for the body")
            .expect("read the response");
        if read == 0 {
            break;
        }
        response.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_other_hosts_origins_bodies_and_sizes() {
    let server = TestServer::start(false, ServerConfig::default()).await;
    let list = server.url("/rpc/list_conversations");

    let ok = server.client.post(&list).json(&json!({})).send().await.expect("send");
    assert_eq!(ok.status(), StatusCode::OK);

    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    let rebound = server.client.post(&list).header(HOST, "evil.example").json(&json!({})).send().await.expect("send");
    assert_eq!(rebound.status(), StatusCode::MISDIRECTED_REQUEST);
    let error: Value = rebound.json().await.expect("a JSON error");
    assert_eq!(error["code"], "invalid_input");
    let rebound_get = server.client.get(server.url("/")).header(HOST, "evil.example:80").send().await.expect("send");
    assert_eq!(rebound_get.status(), StatusCode::MISDIRECTED_REQUEST);

    let no_host = raw_response(&server.base, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.0 421 ") || no_host.starts_with("HTTP/1.1 421 "), "{no_host}");

    let foreign = server.client.post(&list).header(ORIGIN, "http://evil.example").json(&json!({})).send();
    assert_eq!(foreign.await.expect("send").status(), StatusCode::FORBIDDEN);
    let null_origin = server.client.post(&list).header(ORIGIN, "null").json(&json!({})).send();
    assert_eq!(null_origin.await.expect("send").status(), StatusCode::FORBIDDEN);
    let own_origin = server.client.post(&list).header(ORIGIN, server.base.as_str()).json(&json!({})).send();
    assert_eq!(own_origin.await.expect("send").status(), StatusCode::OK);

    // What a cross-site form or a no-cors fetch can send without a preflight.
    let plain = server.client.post(&list).header(CONTENT_TYPE, "text/plain").body("{}").send().await.expect("send");
    assert_eq!(plain.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let form = server.client.post(&list).header(CONTENT_TYPE, "application/x-www-form-urlencoded").body("a=b");
    assert_eq!(form.send().await.expect("send").status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // 20 MB: refused on its declared length, before any of it is read.
    let declared = raw_response(
        &server.base,
        "POST /rpc/create_conversation HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: 20971520\r\n\r\n",
    )
    .await;
    assert!(declared.starts_with("HTTP/1.1 413 "), "{declared}");
    // A client that sends it all anyway gets the 413, or sees the connection cut off while it is still writing
    // (the server answers without reading the body); never a stored conversation.
    let huge = format!("{{\"title\": \"{}\"}}", "x".repeat(20 * 1024 * 1024));
    let too_big = server.client.post(server.url("/rpc/create_conversation")).header(CONTENT_TYPE, "application/json");
    match too_big.body(huge).send().await {
        Ok(response) => assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE),
        Err(error) => assert!(error.is_request(), "{error:?}"),
    }
    let listed: Vec<ConversationInfo> = server.call("list_conversations", json!({})).await;
    assert!(listed.is_empty());

    // Malformed JSON and unknown methods are JSON errors too.
    let malformed = server.client.post(server.url("/rpc/get_conversation")).header(CONTENT_TYPE, "application/json");
    let malformed = malformed.body("{\"conversation_id\": ").send().await.expect("send");
    assert!(malformed.status().is_client_error(), "{}", malformed.status());
    assert_eq!(malformed.json::<Value>().await.expect("a JSON error")["code"], "invalid_input");
    let unknown = server.rpc("format_disk", json!({})).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(unknown.json::<Value>().await.expect("a JSON error")["code"], "not_found");

    // The server still answers after all that.
    let health: Value =
        server.client.get(server.url("/api/health")).send().await.expect("send").json().await.expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_and_the_placeholder_page() {
    let server = TestServer::start(false, ServerConfig::default()).await;
    for path in ["/", "/api/health"] {
        let response = server.client.get(server.url(path)).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        let csp = headers.get("content-security-policy").and_then(|v| v.to_str().ok()).expect("a CSP");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(!csp.contains("http"), "no remote hosts: {csp}");
        assert_eq!(headers.get("x-content-type-options").and_then(|v| v.to_str().ok()), Some("nosniff"));
        assert_eq!(headers.get("referrer-policy").and_then(|v| v.to_str().ok()), Some("no-referrer"));
    }
    let page = server.client.get(server.url("/")).send().await.expect("send").text().await.expect("text");
    assert!(page.contains("not built"), "{page}");
    let refused = server.client.get(server.url("/")).header(HOST, "evil.example").send().await.expect("send");
    assert!(refused.headers().contains_key("content-security-policy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_built_ui() {
    let ui = tempfile::tempdir().expect("temp dir");
    std::fs::write(ui.path().join("index.html"), "<!doctype html><title>built</title>").expect("write");
    std::fs::create_dir(ui.path().join("assets")).expect("mkdir");
    std::fs::write(ui.path().join("assets/app.js"), "console.log(1)").expect("write");
    let config = ServerConfig { ui_dir: Some(ui.path().to_path_buf()), ..ServerConfig::default() };
    let server = TestServer::start(false, config).await;
    let page = server.client.get(server.url("/")).send().await.expect("send").text().await.expect("text");
    assert!(page.contains("<title>built</title>"), "{page}");
    let script = server.client.get(server.url("/assets/app.js")).send().await.expect("send");
    assert_eq!(script.status(), StatusCode::OK);
    let missing = server.client.get(server.url("/assets/nothing.js")).send().await.expect("send");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let escape = server.client.get(server.url("/../../etc/passwd")).send().await.expect("send");
    assert!(!escape.text().await.expect("text").contains("root:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_round_trip() {
    let server = TestServer::start(false, ServerConfig::default()).await;
    let created: ConversationInfo = server.call("create_conversation", json!({"title": "Trip to Lyon"})).await;
    let listed: Vec<ConversationInfo> = server.call("list_conversations", json!({})).await;
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), vec![created.id]);
    assert_eq!(listed[0].title, "Trip to Lyon");

    let renamed: ConversationInfo =
        server.call("rename_conversation", json!({"conversation_id": created.id, "title": "Lyon"})).await;
    assert_eq!(renamed.title, "Lyon");
    let pinned: ConversationInfo =
        server.call("pin_conversation", json!({"conversation_id": created.id, "pinned": true})).await;
    assert!(pinned.pinned);
    let view: ConversationView = server.call("get_conversation", json!({"conversation_id": created.id})).await;
    assert!(view.branch.is_empty());

    let missing = server.rpc("get_conversation", json!({"conversation_id": 999})).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.json::<Value>().await.expect("json")["code"], "not_found");
    let typo = server.rpc("get_conversation", json!({"conversation": created.id})).await;
    assert!(typo.status().is_client_error());

    // Without a model, a message is refused before anything streams: a plain JSON error, not an event stream.
    let no_model = server.rpc("send_message", json!({"conversation_id": created.id, "text": "hi"})).await;
    assert_eq!(no_model.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(no_model.json::<Value>().await.expect("json")["code"], "model");

    // What a browser does for a download and an upload: the export's text, then that text imported as a copy.
    let document: String =
        server.call("render_export", json!({"conversation_ids": [created.id], "format": "json"})).await;
    let imported: Value = server.call("import_document", json!({ "document": document })).await;
    let copy_id = imported["conversation_ids"][0].as_i64().expect("an imported id");
    assert_ne!(copy_id, created.id);
    let copy: ConversationView = server.call("get_conversation", json!({"conversation_id": copy_id})).await;
    assert_eq!(copy.conversation.title, "Lyon");
    let broken = server.rpc("import_document", json!({"document": "{\"format\": \"sepchat-export\""})).await;
    assert_eq!(broken.status(), StatusCode::BAD_REQUEST);
    let (): () = server.call("purge_conversation", json!({"conversation_id": copy_id})).await;

    let _: ConversationInfo = server.call("delete_conversation", json!({"conversation_id": created.id})).await;
    let trash: Vec<ConversationInfo> = server.call("list_trash", json!({})).await;
    assert_eq!(trash.len(), 1);
    let purged: u64 = server.call("empty_trash", json!({})).await;
    assert_eq!(purged, 1);
    let listed: Vec<ConversationInfo> = server.call("list_conversations", json!({})).await;
    assert!(listed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_reply_to_its_result() {
    let server = TestServer::start(true, ServerConfig::default()).await;
    let health: Value =
        server.client.get(server.url("/api/health")).send().await.expect("send").json().await.expect("json");
    assert_eq!(health["model"]["file_name"], "SmolLM2-135M-Instruct.Q4_1.gguf");

    let conversation: ConversationInfo =
        server.call("create_conversation", json!({"sampling": greedy(24), "cache_profile": "low"})).await;
    let response = server
        .rpc("send_message", json!({"conversation_id": conversation.id, "text": "What is the capital of France?"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = SseReader::new(response);
    let mut kinds = Vec::new();
    let mut text = String::new();
    let mut result = None;
    while let Some(event) = events.next().await {
        match event.name.as_str() {
            "message" => {
                let value: Value = serde_json::from_str(&event.data).expect("a ChatEvent");
                let kind = value["type"].as_str().expect("an event type").to_string();
                if kind == "token" {
                    text.push_str(value["text"].as_str().expect("token text"));
                }
                kinds.push(kind);
            }
            "result" => result = Some(serde_json::from_str::<SendResult>(&event.data).expect("a SendResult")),
            other => panic!("unexpected event {other}: {}", event.data),
        }
    }
    let result = result.expect("the stream ends with the result");
    assert_eq!(kinds.first().map(String::as_str), Some("started"));
    assert_eq!(kinds.last().map(String::as_str), Some("finished"));
    assert!(kinds.iter().any(|kind| kind == "token"), "{kinds:?}");
    assert!(kinds.iter().any(|kind| kind == "kv"), "{kinds:?}");
    assert_eq!(result.message.status, MessageStatus::Done);
    assert_eq!(result.message.content, text.trim());
    assert!(text.contains("Paris"), "{text}");

    let view: ConversationView = server.call("get_conversation", json!({"conversation_id": conversation.id})).await;
    assert_eq!(view.branch.len(), 2);
    assert_eq!(view.branch[1].content, result.message.content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_completions_get_an_answer_or_busy() {
    let server = std::sync::Arc::new(TestServer::start(true, ServerConfig::default()).await);
    let request = json!({"prompt": "Once upon a time", "sampling": greedy(4)});
    let started = Instant::now();
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let server = server.clone();
            let request = request.clone();
            tokio::spawn(async move {
                let response = server.rpc("complete", request).await;
                let status = response.status();
                if status == StatusCode::OK {
                    let mut events = SseReader::new(response);
                    let mut last = None;
                    while let Some(event) = events.next().await {
                        last = Some(event);
                    }
                    let last = last.expect("events");
                    assert_eq!(last.name, "result", "{}", last.data);
                    let result: Value = serde_json::from_str(&last.data).expect("a CompleteResult");
                    assert_eq!(result["error"], Value::Null);
                    true
                } else {
                    let retry = response.headers().contains_key("retry-after");
                    let error: Value = response.json().await.expect("a JSON error");
                    assert!(
                        status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::CONFLICT,
                        "{status}: {error}"
                    );
                    assert_eq!(error["code"], "busy");
                    assert!(retry);
                    false
                }
            })
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        if tokio::time::timeout(Duration::from_secs(120), client).await.expect("no client hangs").expect("client") {
            answered += 1;
        }
    }
    assert!(answered >= 1, "at least one completion ran");
    eprintln!("{answered} of 64 answered, the rest busy, in {:?}", started.elapsed());

    // Still up, and still generating.
    let health = server.client.get(server.url("/api/health")).send().await.expect("send");
    assert_eq!(health.status(), StatusCode::OK);
    let response = server.rpc("complete", request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = SseReader::new(response);
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(event);
    }
    assert_eq!(last.expect("events").name, "result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_the_reply() {
    let server = TestServer::start(true, ServerConfig::default()).await;
    let conversation: ConversationInfo = server.call("create_conversation", json!({"sampling": greedy(400)})).await;
    let text = "Write a very long story about a dragon who learns to bake bread.";
    let response = server.rpc("send_message", json!({"conversation_id": conversation.id, "text": text})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = SseReader::new(response);
    let mut tokens = 0;
    while tokens < 3 {
        let event = events.next().await.expect("the stream goes on");
        if event.name == "message" && event.data.contains("\"type\":\"token\"") {
            tokens += 1;
        }
    }
    // Closes the connection mid-reply.
    drop(events);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view: ConversationView = server.call("get_conversation", json!({"conversation_id": conversation.id})).await;
        let reply = view.branch.last().expect("the reply's row");
        if reply.status != MessageStatus::Streaming {
            assert_eq!(reply.status, MessageStatus::Stopped, "{reply:?}");
            assert!(!reply.content.is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "the reply was not stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let generating: bool = server.call("is_generating", json!({"conversation_id": conversation.id})).await;
    assert!(!generating);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_get_a_larger_body_limit_and_nothing_else_does() {
    let server = TestServer::start(false, ServerConfig::default()).await;
    let created: ConversationInfo = server.call("create_conversation", json!({"title": "Big"})).await;
    let document: String =
        server.call("render_export", json!({"conversation_ids": [created.id], "format": "json"})).await;
    let mut parsed: Value = serde_json::from_str(&document).expect("the export is JSON");
    // 20 MB in one field: far over the ordinary limit, well under the upload limit.
    let big = "x".repeat(20 * 1024 * 1024);
    parsed["conversations"][0]["conversation"]["system_prompt"] = json!(big);
    let body = json!({ "document": parsed.to_string() });
    assert!(body.to_string().len() > 20 * 1024 * 1024);
    let imported: Value = server.call("import_document", body).await;
    let copy_id = imported["conversation_ids"][0].as_i64().expect("an imported id");
    let copy: ConversationView = server.call("get_conversation", json!({"conversation_id": copy_id})).await;
    assert_eq!(copy.conversation.system_prompt.as_deref().map(str::len), Some(big.len()));

    // Every other route keeps the ordinary limit, refused on the declared length before any of it is read.
    for path in ["/rpc/create_conversation", "/rpc/import", "/rpc/list_conversations", "/rpc/nonexistent", "/"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {{host}}\r\nContent-Type: application/json\r\nContent-Length: 20971520\r\n\r\n"
        );
        let refused = raw_response(&server.base, &head).await;
        assert!(refused.starts_with("HTTP/1.1 413 "), "{path}: {refused}");
    }
    // And uploads have a limit too.
    let over = sepchat_server::DEFAULT_UPLOAD_BODY_LIMIT + 1;
    let head = format!(
        "POST /rpc/import_document HTTP/1.1\r\nHost: {{host}}\r\nContent-Type: application/json\r\nContent-Length: {over}\r\n\r\n"
    );
    let refused = raw_response(&server.base, &head).await;
    assert!(refused.starts_with("HTTP/1.1 413 "), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_map_is_a_route_with_the_app_errors() {
    // The simulation itself is tested in sepchat-core (tests/cache_map.rs); here only the route and its errors.
    let server = TestServer::start(false, ServerConfig::default()).await;
    let created: ConversationInfo = server.call("create_conversation", json!({})).await;
    let no_model = server.rpc("cache_map", json!({"conversation_id": created.id, "cache": "dense"})).await;
    assert_eq!(no_model.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(no_model.json::<Value>().await.expect("json")["code"], "model");
    let typo = server.rpc("cache_map", json!({"conversation_id": created.id, "profile": "dense"})).await;
    assert!(typo.status().is_client_error());
    assert!(sepchat_server::METHODS.contains(&"cache_map"));
}
