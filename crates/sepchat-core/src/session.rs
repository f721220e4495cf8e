//! What the core knows about the engine's sessions: one engine session per conversation, which ones are warm, and
//! the KV snapshots on disk that let a cold conversation resume without replaying it.
//!
//! The engine worker keeps at most [`WARM_SESSIONS`] caches and drops the least recently used beyond that. It does
//! not say which it holds, so the core mirrors that rule over the commands it sends (every generate and restore
//! uses a session). A wrong guess costs time, never correctness: the worker still reuses exactly the prefix its
//! cache holds, and the report after the reply is corrected from the number of tokens it reused.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use sepchat_engine::{CacheConfig, SessionId};

use crate::api::KvStats;

/// The engine worker's number of warm sessions (its `MAX_WARM_SESSIONS`).
pub const WARM_SESSIONS: usize = 4;

/// Turn-boundary snapshots kept per conversation (the newest by message id): enough to regenerate or edit the
/// last few turns from a snapshot; older turns replay.
pub const SNAPSHOTS_KEPT_PER_CONVERSATION: usize = 4;

/// The session of raw completions ([`crate::App::complete`]): above every conversation id (those are positive
/// `i64`s), so it never collides with one.
pub const RAW_SESSION: SessionId = u64::MAX;

/// The engine session of a conversation.
pub fn session_of(conversation_id: i64) -> SessionId {
    conversation_id as SessionId
}

/// What the warm cache of a conversation holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    pub config: CacheConfig,
    /// The reply whose end the cache holds (`None`: a cache restored or built for another point).
    pub last_reply: Option<i64>,
    /// Whether the cache ever compacted: such a cache cannot roll back to an earlier turn (the worker rebuilds it).
    pub compacted: bool,
    /// The readout at the end of `last_reply`, the baseline that tells a compaction during the next prompt.
    pub last_stats: Option<KvStats>,
}

/// The mirror of the worker's warm sessions, least recently used first.
#[derive(Debug, Default)]
pub struct Sessions {
    recent: VecDeque<SessionId>,
    states: HashMap<SessionId, SessionState>,
}

impl Sessions {
    pub fn is_warm(&self, session: SessionId) -> bool {
        self.recent.contains(&session)
    }

    /// Records that a command used `session`, evicting (as the worker does) the least recently used beyond
    /// [`WARM_SESSIONS`].
    pub fn touch(&mut self, session: SessionId) {
        self.recent.retain(|&id| id != session);
        self.recent.push_back(session);
        while self.recent.len() > WARM_SESSIONS {
            if let Some(evicted) = self.recent.pop_front() {
                self.states.remove(&evicted);
            }
        }
    }

    /// The worker dropped the session (an error, a refused restore, a forget).
    pub fn forget(&mut self, session: SessionId) {
        self.recent.retain(|&id| id != session);
        self.states.remove(&session);
    }

    pub fn state(&self, session: SessionId) -> Option<&SessionState> {
        self.states.get(&session).filter(|_| self.is_warm(session))
    }

    pub fn set_state(&mut self, session: SessionId, state: SessionState) {
        if self.is_warm(session) {
            self.states.insert(session, state);
        }
    }
}

/// `<snapshot dir>/<conversation>-<reply>.kv`: the cache as it was right after that reply.
pub fn snapshot_path(dir: &Path, conversation_id: i64, reply_id: i64) -> PathBuf {
    dir.join(format!("{conversation_id}-{reply_id}.kv"))
}

/// The conversation's snapshots as (reply id, path), newest reply first.
pub fn snapshots_of(dir: &Path, conversation_id: i64) -> Vec<(i64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{conversation_id}-");
    let mut found: Vec<(i64, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let reply = name.to_str()?.strip_prefix(&prefix)?.strip_suffix(".kv")?.parse::<i64>().ok()?;
            Some((reply, entry.path()))
        })
        .collect();
    found.sort_by_key(|(reply, _)| std::cmp::Reverse(*reply));
    found
}

/// Deletes all but the newest `keep` snapshots of the conversation; failures are logged (a stale snapshot is
/// only disk space: restoring checks its identity).
pub fn prune_snapshots(dir: &Path, conversation_id: i64, keep: usize) {
    for (_, path) in snapshots_of(dir, conversation_id).into_iter().skip(keep) {
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), %error, "cannot delete an old KV snapshot");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SessionState {
        SessionState { config: CacheConfig::chat_default(), last_reply: Some(1), compacted: false, last_stats: None }
    }

    #[test]
    fn the_least_recently_used_session_goes_first() {
        let mut sessions = Sessions::default();
        for id in 1..=4 {
            sessions.touch(id);
            sessions.set_state(id, state());
        }
        sessions.touch(1);
        sessions.touch(5);
        assert!(!sessions.is_warm(2), "2 was the least recently used");
        assert!(sessions.state(2).is_none());
        for id in [1, 3, 4, 5] {
            assert!(sessions.is_warm(id), "{id}");
        }
        sessions.forget(3);
        assert!(!sessions.is_warm(3));
        // A state is only kept for a warm session.
        sessions.set_state(9, state());
        assert!(sessions.state(9).is_none());
    }

    #[test]
    fn snapshots_are_listed_newest_first_and_pruned() {
        let dir = tempfile::tempdir().expect("temp dir");
        for reply in [3, 12, 7, 40, 9] {
            std::fs::write(snapshot_path(dir.path(), 5, reply), b"x").expect("write");
        }
        std::fs::write(snapshot_path(dir.path(), 50, 1), b"x").expect("write");
        std::fs::write(dir.path().join("5-x.kv"), b"x").expect("write");
        let replies: Vec<i64> = snapshots_of(dir.path(), 5).into_iter().map(|(reply, _)| reply).collect();
        assert_eq!(replies, [40, 12, 9, 7, 3]);
        prune_snapshots(dir.path(), 5, 2);
        let replies: Vec<i64> = snapshots_of(dir.path(), 5).into_iter().map(|(reply, _)| reply).collect();
        assert_eq!(replies, [40, 12]);
        assert_eq!(snapshots_of(dir.path(), 50).len(), 1, "another conversation's snapshots stay");
    }
}
