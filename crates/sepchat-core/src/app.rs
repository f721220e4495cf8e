//! [`App`]: one value whose methods are the user's actions. Faces hold an `App` (cheap to clone) and call it; they
//! never touch the store or the engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use sepchat_engine::device::device_name;
use sepchat_engine::{Arithmetic, DeviceChoice, Engine, LlamaModel};
use sepchat_store::{NewConversation, Store, DATABASE_FILE_NAME};

use crate::api::{
    ApiError, ConversationInfo, ConversationView, LoadModelRequest, ModelInfo, NewConversationRequest, Sampling,
    SearchHit,
};
use crate::error::{CoreError, Result};
use crate::fingerprint::model_sha256;
use crate::prompt;
use crate::session::{self, Sessions};
use crate::tree::Tree;

/// The folder under the data directory holding KV snapshots.
pub const SNAPSHOT_DIR_NAME: &str = "snapshots";

/// The most search hits one query returns.
pub const MAX_SEARCH_HITS: u32 = 200;

/// The app: the history store, the loaded model's engine, and what the core knows of the engine's sessions.
/// Clones share everything.
#[derive(Clone)]
pub struct App {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub store: Store,
    pub data_dir: PathBuf,
    pub snapshot_dir: PathBuf,
    pub model: RwLock<Option<Arc<LoadedModel>>>,
    pub sessions: Mutex<Sessions>,
    /// Generations in progress by conversation (key 0: raw completions) and their cancel flags.
    pub running: Mutex<HashMap<i64, Arc<AtomicBool>>>,
}

pub(crate) struct LoadedModel {
    pub engine: Arc<Engine>,
    pub info: ModelInfo,
    pub device_choice: DeviceChoice,
}

impl LoadedModel {
    pub fn model(&self) -> &LlamaModel {
        self.engine.model()
    }
}

/// A std mutex whose holder panicked still guards consistent data here (plain maps, no invariants spanning a
/// panic), so a poisoned lock is used as it is rather than taking every later call down.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks a conversation as generating while it lives; the cancel flag is what [`App::stop`] raises.
pub(crate) struct Claim {
    inner: Arc<Inner>,
    key: i64,
    pub cancel: Arc<AtomicBool>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.inner.running).remove(&self.key);
    }
}

/// Runs `work` on tokio's blocking pool (engine calls that wait for the worker, hashing, file IO).
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|error| CoreError::Task(error.to_string()))?
}

impl Inner {
    pub fn loaded(&self) -> Result<Arc<LoadedModel>> {
        self.model.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or(CoreError::NoModel)
    }

    pub fn claim(self: &Arc<Self>, key: i64) -> Result<Claim> {
        let mut running = lock(&self.running);
        if running.contains_key(&key) {
            return Err(CoreError::Busy(key));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        running.insert(key, cancel.clone());
        Ok(Claim { inner: self.clone(), key, cancel })
    }
}

impl App {
    /// Opens (creating it if needed) the history in `data_dir`: the database, crash recovery (replies left
    /// `streaming` become `interrupted`), and the snapshot folder. No model is loaded yet: see [`App::load_model`].
    pub async fn open(data_dir: impl Into<PathBuf>) -> Result<App, ApiError> {
        let data_dir = data_dir.into();
        let store = Store::open(data_dir.join(DATABASE_FILE_NAME)).await.map_err(CoreError::from)?;
        let snapshot_dir = data_dir.join(SNAPSHOT_DIR_NAME);
        Ok(App {
            inner: Arc::new(Inner {
                store,
                data_dir,
                snapshot_dir,
                model: RwLock::new(None),
                sessions: Mutex::new(Sessions::default()),
                running: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// [`App::open`] on the default data directory (`$SEPCHAT_DATA_DIR`, else the platform's data dir + sepchat).
    pub async fn open_default() -> Result<App, ApiError> {
        let dir = sepchat_store::default_data_dir().ok_or(CoreError::NoHomeDirectory)?;
        App::open(dir).await
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// How many replies [`App::open`] found cut off by a crash and marked `interrupted`.
    pub fn recovered_on_open(&self) -> u64 {
        self.inner.store.recovered_on_open()
    }

    // ---- Model ----

    /// Loads a model (validated first; a bad file is an error and the app keeps its current model) and starts its
    /// engine. Loading the model already loaded, on the same device, does nothing. Refused while a reply is being
    /// generated.
    pub async fn load_model(&self, request: LoadModelRequest) -> Result<ModelInfo, ApiError> {
        Ok(self.load_model_inner(request).await?)
    }

    async fn load_model_inner(&self, request: LoadModelRequest) -> Result<ModelInfo> {
        let path = match request.path {
            Some(path) => PathBuf::from(path),
            None => {
                let path = sepchat_gguf::default_model::default_model_path().ok_or(CoreError::NoHomeDirectory)?;
                if !path.exists() {
                    return Err(CoreError::DefaultModelMissing { path });
                }
                path
            }
        };
        let device_choice: DeviceChoice = match request.device.as_deref() {
            None => DeviceChoice::Auto,
            Some(name) => name.parse().map_err(CoreError::InvalidInput)?,
        };
        let arithmetic: Arithmetic = match request.attention.as_deref() {
            None => Arithmetic::default(),
            Some(name) => name.parse().map_err(CoreError::InvalidInput)?,
        };
        if let Ok(current) = self.inner.loaded() {
            if Path::new(&current.info.path) == path
                && current.device_choice == device_choice
                && current.model().attention_arithmetic() == arithmetic
            {
                return Ok(current.info.clone());
            }
        }
        tracing::info!(path = %path.display(), "loading a model");
        let load_path = path.clone();
        let model = blocking(move || {
            let device = device_choice.open().map_err(CoreError::model_load)?;
            let mut model = LlamaModel::load(&load_path, &device).map_err(CoreError::model_load)?;
            model.set_attention_arithmetic(arithmetic);
            Ok(model)
        })
        .await?;
        let hash_path = path.clone();
        let data_dir = self.inner.data_dir.clone();
        let sha256 = blocking(move || model_sha256(&hash_path, &data_dir)).await?;
        let info = ModelInfo {
            path: path.to_string_lossy().into_owned(),
            file_name: path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default(),
            sha256,
            device: device_name(model.device()).to_string(),
            context_length: model.config().context_length,
            weights_bytes: model.weights_bytes(),
            has_chat_template: model.chat_template().is_some(),
        };
        let engine = Engine::start(model).map_err(CoreError::model_load)?;
        let loaded = Arc::new(LoadedModel { engine: Arc::new(engine), info: info.clone(), device_choice });
        {
            // Checked under the running lock so no reply can start against the old engine meanwhile.
            let running = lock(&self.inner.running);
            if !running.is_empty() {
                return Err(CoreError::ModelBusy);
            }
            let old = self.inner.model.write().unwrap_or_else(PoisonError::into_inner).replace(loaded);
            // The new engine has no sessions; the old one's caches go with it.
            *lock(&self.inner.sessions) = Sessions::default();
            drop(running);
            if let Some(old) = old {
                // Dropping the last handle joins the old worker thread: do it off the async threads.
                tokio::task::spawn_blocking(move || drop(old));
            }
        }
        Ok(info)
    }

    /// The loaded model, if any.
    pub fn model_info(&self) -> Option<ModelInfo> {
        self.inner.loaded().ok().map(|model| model.info.clone())
    }

    // ---- Conversations ----

    /// A new, empty conversation. The sampling and cache profile are checked before anything is stored.
    pub async fn create_conversation(&self, request: NewConversationRequest) -> Result<ConversationInfo, ApiError> {
        Ok(self.create_conversation_inner(request).await?)
    }

    async fn create_conversation_inner(&self, request: NewConversationRequest) -> Result<ConversationInfo> {
        if let Some(sampling) = &request.sampling {
            prompt::sampling_params(sampling)?;
        }
        if let Some(spec) = &request.cache_profile {
            self.check_cache_profile(spec)?;
        }
        let model = self.inner.loaded().ok();
        let conversation = self
            .inner
            .store
            .create_conversation(NewConversation {
                title: request.title.unwrap_or_default().trim().to_string(),
                system_prompt: request.system_prompt,
                sampling: request.sampling,
                cache_profile: request.cache_profile,
                model_path: model.as_ref().map(|model| model.info.path.clone()),
                model_sha256: model.as_ref().map(|model| model.info.sha256.clone()),
            })
            .await?;
        Ok(conversation.into())
    }

    /// Conversations not in the trash: pinned first, then the most recently changed.
    pub async fn list_conversations(&self) -> Result<Vec<ConversationInfo>, ApiError> {
        let rows = self.inner.store.list_conversations().await.map_err(CoreError::from)?;
        Ok(rows.into_iter().map(ConversationInfo::from).collect())
    }

    /// Conversations in the trash, most recently trashed first.
    pub async fn list_trash(&self) -> Result<Vec<ConversationInfo>, ApiError> {
        let rows = self.inner.store.list_trashed().await.map_err(CoreError::from)?;
        Ok(rows.into_iter().map(ConversationInfo::from).collect())
    }

    /// The conversation with its active branch (root first, with each message's siblings) and that branch's
    /// compression markers.
    pub async fn get_conversation(&self, conversation_id: i64) -> Result<ConversationView, ApiError> {
        Ok(self.view(conversation_id).await?)
    }

    pub(crate) async fn view(&self, conversation_id: i64) -> Result<ConversationView> {
        let full = self.inner.store.full_conversation(conversation_id).await?;
        let tree = Tree::new(&full.messages);
        let branch: Vec<_> = match full.conversation.active_leaf_id {
            Some(leaf) => tree.branch(leaf).into_iter().map(|message| tree.info(message)).collect(),
            None => Vec::new(),
        };
        let on_branch: std::collections::HashSet<i64> = branch.iter().map(|message| message.id).collect();
        let markers = full.markers.into_iter().filter(|marker| on_branch.contains(&marker.message_id)).collect();
        Ok(ConversationView { conversation: full.conversation.into(), branch, markers })
    }

    pub async fn rename_conversation(&self, conversation_id: i64, title: &str) -> Result<ConversationInfo, ApiError> {
        let title = title.trim();
        if title.is_empty() {
            return Err(CoreError::InvalidInput("the title is empty".into()).into());
        }
        self.inner.store.rename(conversation_id, title).await.map_err(CoreError::from)?;
        self.conversation_info(conversation_id).await
    }

    pub async fn pin_conversation(&self, conversation_id: i64, pinned: bool) -> Result<ConversationInfo, ApiError> {
        self.inner.store.set_pinned(conversation_id, pinned).await.map_err(CoreError::from)?;
        self.conversation_info(conversation_id).await
    }

    /// Moves the conversation to the trash; [`App::restore_conversation`] undoes it.
    pub async fn delete_conversation(&self, conversation_id: i64) -> Result<ConversationInfo, ApiError> {
        self.inner.store.trash_conversation(conversation_id).await.map_err(CoreError::from)?;
        self.conversation_info(conversation_id).await
    }

    /// Takes the conversation out of the trash, back to its place in the list.
    pub async fn restore_conversation(&self, conversation_id: i64) -> Result<ConversationInfo, ApiError> {
        self.inner.store.restore_conversation(conversation_id).await.map_err(CoreError::from)?;
        self.conversation_info(conversation_id).await
    }

    /// Deletes the conversation for good (trashed or not), with its messages, markers, snapshots and warm cache.
    pub async fn purge_conversation(&self, conversation_id: i64) -> Result<(), ApiError> {
        // Holding the claim keeps a reply from starting while the rows go.
        let _claim = self.inner.claim(conversation_id)?;
        self.inner.store.delete_conversation(conversation_id).await.map_err(CoreError::from)?;
        self.forget_conversation(conversation_id);
        Ok(())
    }

    /// Deletes every conversation in the trash for good; returns how many.
    pub async fn empty_trash(&self) -> Result<u64, ApiError> {
        let trashed = self.inner.store.list_trashed().await.map_err(CoreError::from)?;
        let purged = self.inner.store.purge_trashed(Duration::ZERO).await.map_err(CoreError::from)?;
        for conversation in trashed {
            self.forget_conversation(conversation.id);
        }
        Ok(purged)
    }

    fn forget_conversation(&self, conversation_id: i64) {
        let session = session::session_of(conversation_id);
        lock(&self.inner.sessions).forget(session);
        if let Ok(model) = self.inner.loaded() {
            // A stopped worker has no cache to drop.
            let _ = model.engine.forget_session(session);
        }
        session::prune_snapshots(&self.inner.snapshot_dir, conversation_id, 0);
    }

    /// Full-text search over titles and messages of conversations not in the trash, best first.
    pub async fn search(&self, query: &str, limit: Option<u32>) -> Result<Vec<SearchHit>, ApiError> {
        let limit = limit.unwrap_or(MAX_SEARCH_HITS).min(MAX_SEARCH_HITS);
        Ok(self.inner.store.search(query, limit).await.map_err(CoreError::from)?)
    }

    /// `None`: the app's default system prompt; `Some("")`: none. Takes effect from the next reply (the cache is
    /// rebuilt then, since the prompt's beginning changed).
    pub async fn set_system_prompt(
        &self,
        conversation_id: i64,
        system_prompt: Option<String>,
    ) -> Result<ConversationInfo, ApiError> {
        self.inner.store.set_system_prompt(conversation_id, system_prompt.as_deref()).await.map_err(CoreError::from)?;
        self.conversation_info(conversation_id).await
    }

    /// The conversation's sampling settings (unset fields: the app's defaults), checked first.
    pub async fn set_sampling(&self, conversation_id: i64, sampling: Sampling) -> Result<ConversationInfo, ApiError> {
        prompt::sampling_params(&sampling)?;
        self.inner.store.set_sampling(conversation_id, Some(&sampling)).await.map_err(CoreError::from)?;
        self.conversation_info(conversation_id).await
    }

    /// The conversation's KV cache profile (`None`: the default), checked first. The next reply starts a new cache
    /// under the new rule: a snapshot taken under the old one is refused and the branch replayed.
    pub async fn set_cache_profile(
        &self,
        conversation_id: i64,
        cache_profile: Option<String>,
    ) -> Result<ConversationInfo, ApiError> {
        if let Some(spec) = &cache_profile {
            self.check_cache_profile(spec)?;
        }
        self.inner.store.set_cache_profile(conversation_id, cache_profile.as_deref()).await.map_err(CoreError::from)?;
        self.conversation_info(conversation_id).await
    }

    /// The spec's syntax always; its sizes against the model's trained context when a model is loaded.
    fn check_cache_profile(&self, spec: &str) -> Result<()> {
        match self.inner.loaded() {
            Ok(model) => prompt::cache_config(Some(spec), model.info.context_length).map(|_| ()),
            Err(_) => spec.parse::<sepchat_engine::CacheConfig>().map(|_| ()).map_err(CoreError::from),
        }
    }

    /// Shows another branch: `message_id` (e.g. a sibling reply or an edited prompt) and, below it, the newest
    /// continuation each time.
    pub async fn switch_branch(&self, conversation_id: i64, message_id: i64) -> Result<ConversationView, ApiError> {
        Ok(self.switch_branch_inner(conversation_id, message_id).await?)
    }

    async fn switch_branch_inner(&self, conversation_id: i64, message_id: i64) -> Result<ConversationView> {
        let messages = self.inner.store.messages(conversation_id).await?;
        let tree = Tree::new(&messages);
        if tree.get(message_id).is_none() {
            // Either no such message, or one of another conversation: both are "not here".
            return Err(sepchat_store::StoreError::MessageNotFound(message_id).into());
        }
        let leaf = tree.newest_leaf_under(message_id);
        self.inner.store.set_active_leaf(conversation_id, leaf).await?;
        self.view(conversation_id).await
    }

    /// Raises the stop flag of the conversation's reply in progress; the reply ends as `stopped`, its text kept.
    /// `false` when nothing was generating.
    pub fn stop(&self, conversation_id: i64) -> bool {
        match lock(&self.inner.running).get(&conversation_id) {
            Some(cancel) => {
                cancel.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Whether the conversation is generating a reply now.
    pub fn is_generating(&self, conversation_id: i64) -> bool {
        lock(&self.inner.running).contains_key(&conversation_id)
    }

    async fn conversation_info(&self, conversation_id: i64) -> Result<ConversationInfo, ApiError> {
        let row = self.inner.store.get_conversation(conversation_id).await.map_err(CoreError::from)?;
        Ok(row.into())
    }
}
