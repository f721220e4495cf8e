//! Walking a conversation's message tree in memory: the branch on screen, siblings, and where a branch ends.

use std::collections::HashMap;

use sepchat_store::Message;

use crate::api::MessageInfo;

/// The messages of one conversation indexed by id and by parent.
pub struct Tree<'a> {
    by_id: HashMap<i64, &'a Message>,
    /// Children of each parent (`None`: the first messages), oldest first.
    children: HashMap<Option<i64>, Vec<i64>>,
}

impl<'a> Tree<'a> {
    pub fn new(messages: &'a [Message]) -> Self {
        let mut by_id = HashMap::with_capacity(messages.len());
        let mut children: HashMap<Option<i64>, Vec<i64>> = HashMap::new();
        for message in messages {
            by_id.insert(message.id, message);
            children.entry(message.parent_id).or_default().push(message.id);
        }
        for ids in children.values_mut() {
            ids.sort_unstable();
        }
        Tree { by_id, children }
    }

    pub fn get(&self, id: i64) -> Option<&'a Message> {
        self.by_id.get(&id).copied()
    }

    /// Root first, ending at `leaf`; empty if `leaf` is not in the tree. A parent missing from the tree (or a
    /// cycle in a hand-edited database) ends the walk instead of looping.
    pub fn branch(&self, leaf: i64) -> Vec<&'a Message> {
        let mut path = Vec::new();
        let mut current = self.get(leaf);
        while let Some(message) = current {
            if path.len() > self.by_id.len() {
                break;
            }
            path.push(message);
            current = message.parent_id.and_then(|parent| self.get(parent));
        }
        path.reverse();
        path
    }

    /// The ids sharing `message`'s parent, `message` included, oldest first.
    pub fn siblings(&self, message: &Message) -> Vec<i64> {
        self.children.get(&message.parent_id).cloned().unwrap_or_else(|| vec![message.id])
    }

    /// The end of the branch through `id`: from it, down the newest child each time. Switching to a sibling shows
    /// that sibling's latest continuation.
    pub fn newest_leaf_under(&self, id: i64) -> i64 {
        let mut current = id;
        let mut steps = 0;
        while let Some(&newest) = self.children.get(&Some(current)).and_then(|ids| ids.last()) {
            current = newest;
            steps += 1;
            if steps > self.by_id.len() {
                break;
            }
        }
        current
    }

    pub fn info(&self, message: &Message) -> MessageInfo {
        message_info(message, self.siblings(message))
    }
}

/// A stored message with its siblings, as the API shows it.
pub fn message_info(message: &Message, sibling_ids: Vec<i64>) -> MessageInfo {
    let sibling_index = sibling_ids.iter().position(|&id| id == message.id).unwrap_or(0);
    MessageInfo {
        id: message.id,
        parent_id: message.parent_id,
        role: message.role,
        content: message.content.clone(),
        status: message.status,
        error: message.error.clone(),
        stats: message.stats.clone(),
        created_at: message.created_at,
        updated_at: message.updated_at,
        sibling_ids,
        sibling_index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sepchat_store::{MessageStatus, Role};

    fn message(id: i64, parent_id: Option<i64>) -> Message {
        Message {
            id,
            conversation_id: 1,
            parent_id,
            role: if parent_id.is_none() || id % 2 == 1 { Role::User } else { Role::Assistant },
            content: format!("m{id}"),
            status: MessageStatus::Done,
            error: None,
            stats: None,
            stats_raw: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn branches_siblings_and_leaves() {
        // 1 -> 2 -> 3 -> 4, 2 -> 5 (edited prompt) -> 6, 1 -> 7 (regenerated reply)
        let messages =
            [message(1, None), message(2, Some(1)), message(3, Some(2)), message(4, Some(3)), message(5, Some(2))]
                .into_iter()
                .chain([message(6, Some(5)), message(7, Some(1))])
                .collect::<Vec<_>>();
        let tree = Tree::new(&messages);
        let ids = |path: Vec<&Message>| path.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(tree.branch(4)), [1, 2, 3, 4]);
        assert_eq!(ids(tree.branch(6)), [1, 2, 5, 6]);
        assert!(tree.branch(99).is_empty());
        assert_eq!(tree.siblings(&messages[2]), [3, 5]);
        assert_eq!(tree.info(&messages[4]).sibling_index, 1);
        assert_eq!(tree.newest_leaf_under(1), 7);
        assert_eq!(tree.newest_leaf_under(2), 6);
        assert_eq!(tree.newest_leaf_under(3), 4);
        assert_eq!(tree.newest_leaf_under(4), 4);
    }
}
