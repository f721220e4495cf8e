//! Black-box tests of the stored history: `ask`/`chat` write conversations, a reply killed mid-stream is found
//! `interrupted` with a prefix of what was printed, continued conversations resume their KV cache from a snapshot
//! (or replay when the snapshot does not fit), and the history commands list, show, search, export, import, trash
//! and restore.
//!
//! Each test has its own history directory (`SEPCHAT_DATA_DIR`) and needs the default model (it fails, never
//! skips, without it).

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sepchat_store::{MessageStatus, Role, Store, DATABASE_FILE_NAME};
use support::{assert_clean_failure, assert_success, default_model, run, run_with_stdin, sepchat, TIMEOUT};

/// How many replies the crash test kills.
const KILLS: usize = 20;

fn sepchat_in(data_dir: &Path) -> Command {
    let mut command = sepchat();
    command.env("SEPCHAT_DATA_DIR", data_dir);
    command
}

/// The conversation id from the `[saved] conversation N, reply M (status)` line on stderr.
fn saved_conversation(stderr: &str) -> i64 {
    let line = stderr
        .lines()
        .find(|line| line.starts_with("[saved] conversation "))
        .unwrap_or_else(|| panic!("no [saved] line on stderr: {stderr:?}"));
    line["[saved] conversation ".len()..]
        .split(',')
        .next()
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("no conversation id in {line:?}"))
}

/// The `[kv]` readout line (in `chat` it follows the `> ` prompt on the same line).
fn readout(stderr: &str) -> &str {
    stderr
        .lines()
        .find_map(|line| line.find("[kv]").map(|at| &line[at..]))
        .unwrap_or_else(|| panic!("no [kv] readout: {stderr:?}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// A number in 0..bound that differs from run to run (std's hasher is randomly seeded).
fn random_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    hasher.finish() % bound
}

/// Starts `sepchat ask --conversation ID` with a long reply and SIGKILLs it after it printed a random number of
/// bytes (plus a random delay), 20 times. After each kill the database is opened as the next start would open it:
/// it passes `PRAGMA integrity_check`, every user message ever committed is there byte for byte, the killed reply
/// is `interrupted` and its text is a prefix of what was printed (and stays as it was afterwards). Finally a new
/// message after a killed reply still gets a normal reply.
#[test]
fn killed_replies_are_interrupted_prefixes_of_what_was_printed_and_the_history_stays_whole() {
    default_model();
    let data = tempfile::tempdir().expect("temp dir");
    let first = run(sepchat_in(data.path()).args(["ask", "--max-tokens", "8", "Hello"]), TIMEOUT);
    assert_success(&first, "ask (first message)");
    let conversation_id = saved_conversation(&first.stderr);
    let id_arg = conversation_id.to_string();
    let runtime = runtime();
    let database = data.path().join(DATABASE_FILE_NAME);
    let first_reply = {
        let store = runtime.block_on(Store::open(&database)).expect("open the history");
        let messages = runtime.block_on(store.messages(conversation_id)).expect("messages");
        runtime.block_on(store.close());
        assert_eq!(messages.len(), 2, "{messages:?}");
        messages[1].id
    };

    let mut committed: Vec<String> = vec!["Hello".to_string()];
    let mut interrupted: HashMap<i64, String> = HashMap::new();
    let mut kills = 0;
    let mut attempt = 0;
    while kills < KILLS {
        attempt += 1;
        assert!(attempt <= 3 * KILLS, "only {kills} of {attempt} replies were still streaming when killed");
        // Non-ASCII on purpose: user messages must come back byte for byte. Counting makes even this small model
        // write on for a long time.
        let prompt = format!("Zoë the dragon 🐉 asks, attempt {attempt}: count from 1 to 1000 in words, one per line.");
        let seed = (1000 + attempt).to_string();
        let mut child = sepchat_in(data.path())
            .args(["ask", "--conversation", &id_arg, "--max-tokens", "2000", "--seed", &seed, &prompt])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sepchat ask");
        let printed = Arc::new(Mutex::new(Vec::new()));
        let stdout_reader = {
            let printed = printed.clone();
            let mut stdout = child.stdout.take().expect("piped stdout");
            thread::spawn(move || {
                let mut buffer = [0u8; 256];
                while let Ok(read) = stdout.read(&mut buffer) {
                    if read == 0 {
                        break;
                    }
                    printed.lock().expect("lock").extend_from_slice(&buffer[..read]);
                }
            })
        };
        let stderr_reader = {
            let mut stderr = child.stderr.take().expect("piped stderr");
            thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
        };
        let kill_after_bytes = 1 + random_below(100) as usize;
        let then_wait = Duration::from_millis(random_below(300));
        let deadline = Instant::now() + TIMEOUT;
        while printed.lock().expect("lock").len() < kill_after_bytes {
            if child.try_wait().expect("poll the child").is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "attempt {attempt}: no output within {TIMEOUT:?}");
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(then_wait);
        // On Unix `kill` is SIGKILL: no destructor, no flush, no chance to tidy up.
        let _ = child.kill();
        let status = child.wait().expect("wait for the child");
        stdout_reader.join().expect("stdout reader");
        let stderr = stderr_reader.join().expect("stderr reader");
        let printed = printed.lock().expect("lock").clone();
        let killed = status.signal() == Some(9);
        assert!(killed || status.success(), "attempt {attempt}: {status}, stderr {stderr:?}");
        assert!(!printed.is_empty(), "attempt {attempt}: nothing printed; stderr {stderr:?}");
        committed.push(prompt.clone());

        let store = runtime.block_on(Store::open(&database)).expect("open the history after the kill");
        assert_eq!(runtime.block_on(store.integrity_check()).expect("integrity check"), ["ok"]);
        let messages = runtime.block_on(store.messages(conversation_id)).expect("messages");
        for text in &committed {
            let count = messages.iter().filter(|m| m.role == Role::User && m.content == *text).count();
            assert_eq!(count, 1, "attempt {attempt}: the user message {text:?} is stored {count} times");
        }
        for (reply_id, text) in &interrupted {
            let reply = messages.iter().find(|m| m.id == *reply_id).expect("an earlier interrupted reply");
            assert_eq!((reply.status, &reply.content), (MessageStatus::Interrupted, text), "it never changes");
        }
        let user = messages.iter().find(|m| m.role == Role::User && m.content == prompt).expect("this attempt's");
        let replies: Vec<_> = messages.iter().filter(|m| m.parent_id == Some(user.id)).collect();
        assert_eq!(replies.len(), 1, "attempt {attempt}: one reply row: {replies:?}");
        let reply = replies[0];
        eprintln!(
            "attempt {attempt}: {status}, kill after {kill_after_bytes} bytes + {then_wait:?}, printed {} bytes, stored {} bytes, {}",
            printed.len(),
            reply.content.len(),
            reply.status.as_str()
        );
        if reply.status == MessageStatus::Interrupted {
            assert!(killed, "attempt {attempt}: interrupted without a kill ({status})");
            kills += 1;
            assert_eq!(store.recovered_on_open(), 1, "attempt {attempt}: the killed reply was left streaming");
            assert!(
                printed.starts_with(reply.content.as_bytes()),
                "attempt {attempt}: the stored reply is not a prefix of what was printed\nstored:  {:?}\nprinted: {:?}",
                reply.content,
                String::from_utf8_lossy(&printed)
            );
            interrupted.insert(reply.id, reply.content.clone());
        } else {
            // The reply ended on its own, and the kill (if any) came after it was stored: while the snapshot was
            // written, or before the final newline was printed.
            assert_eq!(reply.status, MessageStatus::Done, "attempt {attempt}: {stderr:?}");
            assert_eq!(store.recovered_on_open(), 0, "attempt {attempt}");
            let full = format!("{}\n", reply.content).into_bytes();
            assert!(full.starts_with(&printed) && printed.len() >= reply.content.len(), "attempt {attempt}");
        }
        // The next attempt continues after the first reply again (a branch of its own, as an edit would make):
        // after a pile of cut-off replies this small model answers in one line, which could end before the kill.
        runtime.block_on(store.set_active_leaf(conversation_id, first_reply)).expect("set the active leaf");
        runtime.block_on(store.close());
    }

    // The last message continues after a killed reply: its text is part of the prompt.
    let killed_reply = *interrupted.keys().max().expect("killed replies");
    let store = runtime.block_on(Store::open(&database)).expect("open the history");
    runtime.block_on(store.set_active_leaf(conversation_id, killed_reply)).expect("set the active leaf");
    runtime.block_on(store.close());
    let last = run(
        sepchat_in(data.path()).args([
            "ask",
            "--conversation",
            &id_arg,
            "--max-tokens",
            "8",
            "Thanks, that is enough.",
        ]),
        TIMEOUT,
    );
    assert_success(&last, "ask after the kills");
    assert!(!last.stdout.trim().is_empty(), "{:?}", last.stderr);
    let store = runtime.block_on(Store::open(&database)).expect("open the history");
    assert_eq!(store.recovered_on_open(), 0, "a finished reply is not recovered");
    assert_eq!(runtime.block_on(store.integrity_check()).expect("integrity check"), ["ok"]);
    let messages = runtime.block_on(store.messages(conversation_id)).expect("messages");
    let last_reply = messages.last().expect("messages");
    assert_eq!((last_reply.role, last_reply.status), (Role::Assistant, MessageStatus::Done));
    assert_eq!(format!("{}\n", last_reply.content), last.stdout);
    let stored_interrupted = messages.iter().filter(|m| m.status == MessageStatus::Interrupted).count();
    assert_eq!(stored_interrupted, KILLS);
    runtime.block_on(store.close());
}

/// A conversation started by `ask` continues in new processes: the cold cache is restored from the snapshot of the
/// last reply (the readout says so, with the time to first token); another `--cache` refuses that snapshot and
/// replays the branch; `chat --conversation` continues too. Then the history commands.
#[test]
fn continued_conversations_and_the_history_commands() {
    default_model();
    let data = tempfile::tempdir().expect("temp dir");
    let ask = |args: &[&str]| {
        let output = run(sepchat_in(data.path()).arg("ask").args(args), TIMEOUT);
        assert_success(&output, &format!("ask {args:?}"));
        output
    };
    let first = ask(&["--greedy", "What is the capital of France?"]);
    assert_eq!(first.stdout, "The capital of France is Paris.\n");
    assert!(readout(&first.stderr).ends_with("session: fresh"), "{}", first.stderr);
    let id = saved_conversation(&first.stderr).to_string();

    let second = ask(&["--conversation", &id, "And of Italy?"]);
    let line = readout(&second.stderr);
    assert!(line.contains("session: restored_from_snapshot"), "{line}");
    assert!(line.contains("first token "), "{line}");
    assert!(!line.contains("(0 reused)"), "a restored cache is reused: {line}");
    assert_eq!(saved_conversation(&second.stderr).to_string(), id);

    let third = ask(&["--conversation", &id, "--cache", "low", "And of Spain?"]);
    let line = readout(&third.stderr);
    assert!(line.contains("session: replayed") && line.contains("cache setting"), "{line}");
    assert!(line.starts_with("[kv] sep:a=4,s=128,w=256,c=512 |"), "{line}");

    let chat = run_with_stdin(
        sepchat_in(data.path()).args(["chat", "--conversation", &id]),
        Some("Thanks!\n/exit\n"),
        TIMEOUT,
    );
    assert_success(&chat, "chat --conversation");
    assert!(chat.stderr.contains(&format!("continuing conversation {id}")), "{:?}", chat.stderr);
    assert!(chat.stderr.contains("KV cache: sep:a=4,s=128,w=256,c=512\n"), "the conversation's own: {:?}", chat.stderr);
    let line = readout(&chat.stderr);
    assert!(line.contains("session: restored_from_snapshot"), "the snapshot under `low` now fits: {line}");

    let list = run(sepchat_in(data.path()).args(["list", "--json"]), TIMEOUT);
    assert_success(&list, "list --json");
    let conversations: serde_json::Value = serde_json::from_str(&list.stdout).expect("list --json prints JSON");
    assert_eq!(conversations.as_array().map(Vec::len), Some(1), "{conversations}");
    assert_eq!(conversations[0]["title"], "What is the capital of France?");
    assert_eq!(conversations[0]["cache_profile"], "low");
    assert_eq!(conversations[0]["sampling"]["temperature"], 0.0, "--greedy is the conversation's setting");

    let show = run(sepchat_in(data.path()).args(["show", &id]), TIMEOUT);
    assert_success(&show, "show");
    assert_eq!(show.stdout.lines().filter(|line| line.contains(" user [done]")).count(), 4, "{}", show.stdout);
    assert_eq!(show.stdout.lines().filter(|line| line.contains(" assistant [done]")).count(), 4, "{}", show.stdout);
    assert!(show.stdout.contains("The capital of France is Paris."), "{}", show.stdout);

    let search = run(sepchat_in(data.path()).args(["search", "Ital"]), TIMEOUT);
    assert_success(&search, "search");
    assert!(search.stdout.starts_with(&format!("{id} #")) && search.stdout.contains("«Italy»"), "{}", search.stdout);

    let json_path = data.path().join("export.json");
    let export = run(sepchat_in(data.path()).args(["export", &id, "-o"]).arg(&json_path), TIMEOUT);
    assert_success(&export, "export (format from the extension)");
    let import = run(sepchat_in(data.path()).arg("import").arg(&json_path), TIMEOUT);
    assert_success(&import, "import");
    let imported = import.stdout.trim().rsplit(' ').next().expect("an id").to_string();
    assert!(import.stdout.starts_with("imported 1 conversation(s): "), "{}", import.stdout);
    let markdown = data.path().join("all.md");
    let export_all =
        run(sepchat_in(data.path()).args(["export", "--all", "--format", "md", "-o"]).arg(&markdown), TIMEOUT);
    assert_success(&export_all, "export --all");
    let text = std::fs::read_to_string(&markdown).expect("the Markdown export");
    assert_eq!(text.matches("The capital of France is Paris.").count(), 2, "both conversations");

    let count = |trash: bool| {
        let mut command = sepchat_in(data.path());
        command.args(["list", "--json"]);
        if trash {
            command.arg("--trash");
        }
        let output = run(&mut command, TIMEOUT);
        assert_success(&output, "list");
        serde_json::from_str::<serde_json::Value>(&output.stdout).expect("JSON").as_array().map_or(0, Vec::len)
    };
    assert_eq!((count(false), count(true)), (2, 0));
    assert_success(&run(sepchat_in(data.path()).args(["rm", &imported]), TIMEOUT), "rm");
    assert_eq!((count(false), count(true)), (1, 1));
    assert_success(&run(sepchat_in(data.path()).args(["restore", &imported]), TIMEOUT), "restore");
    assert_eq!((count(false), count(true)), (2, 0));
    assert_success(&run(sepchat_in(data.path()).args(["rm", "--purge", &imported]), TIMEOUT), "rm --purge");
    assert_eq!((count(false), count(true)), (1, 0));
    let gone = run(sepchat_in(data.path()).args(["show", &imported]), TIMEOUT);
    assert_clean_failure(&gone, "show a purged conversation");
    assert!(gone.stderr.contains("does not exist"), "{:?}", gone.stderr);
}
