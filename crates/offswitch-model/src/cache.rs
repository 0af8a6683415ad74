//! A response cache on disk, keyed by the backend's identity and the full request, so that
//! re-running a cell costs nothing and reproduces the same transcript exactly.
//!
//! One file per response under `<dir>/<2 hex>/<64 hex>.json`, written atomically (temporary
//! file, then rename). An unreadable or foreign entry counts as a miss and is overwritten by the
//! next success. Errors are never cached: a failed call must be retried on the next run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use offswitch_core::{BackendError, ChatBackend, ChatRequest, ChatResponse};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped whenever the key derivation or the entry format changes, so old entries miss
/// instead of being misread.
const CACHE_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("failed to write cache entry {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to serialise cache entry {key}: {source}")]
    Serialise {
        key: String,
        source: serde_json::Error,
    },
}

/// Whether a response came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

#[derive(Debug, Clone)]
pub struct ResponseCache {
    dir: PathBuf,
}

impl ResponseCache {
    /// A cache rooted at `dir`; the directory is created on the first write.
    pub fn new(dir: impl Into<PathBuf>) -> ResponseCache {
        ResponseCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sha256, in hex, of the backend id and the request serialised canonically (struct
    /// fields in declaration order, no whitespace). API keys are not part of the id.
    pub fn key(backend_id: &str, request: &ChatRequest) -> String {
        let canonical = serde_json::to_vec(&KeyMaterial {
            format: CACHE_FORMAT,
            backend: backend_id,
            request,
        })
        .expect("a ChatRequest always serialises");
        hex::encode(Sha256::digest(&canonical))
    }

    pub fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// The stored response for `key`, if there is a valid entry.
    pub async fn get(&self, key: &str) -> Option<ChatResponse> {
        let path = self.path_of(key);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("ignoring unreadable cache entry {}: {e}", path.display());
                return None;
            }
        };
        match serde_json::from_slice::<CacheEntry>(&bytes) {
            Ok(entry) if entry.format == CACHE_FORMAT && entry.key == key => Some(entry.response),
            Ok(_) => {
                tracing::warn!(
                    "ignoring cache entry {} written for another key",
                    path.display()
                );
                None
            }
            Err(e) => {
                tracing::warn!("ignoring corrupt cache entry {}: {e}", path.display());
                None
            }
        }
    }

    /// Store `response` under `key`, replacing any entry atomically.
    pub async fn put(
        &self,
        key: &str,
        backend_id: &str,
        response: &ChatResponse,
    ) -> Result<(), CacheError> {
        let path = self.path_of(key);
        let entry = CacheEntry {
            format: CACHE_FORMAT,
            key: key.to_owned(),
            backend: backend_id.to_owned(),
            response: response.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&entry).map_err(|source| CacheError::Serialise {
            key: key.to_owned(),
            source,
        })?;
        let parent = path.parent().expect("entry paths have a parent");
        let write_error = |source| CacheError::Write {
            path: path.clone(),
            source,
        };
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(write_error)?;
        // Unique per process and call, so concurrent writers of the same key never share a
        // temporary file (a random part too: processes in other pid namespaces sharing the
        // cache, such as shard pods, can have the same pid); the last rename wins with a
        // complete entry either way.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let temp = parent.join(format!(
            ".{key}.{}.{}.{:016x}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u64>()
        ));
        let written = async {
            use tokio::io::AsyncWriteExt;
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .await?;
            file.write_all(&bytes).await?;
            file.flush().await
        };
        if let Err(e) = written.await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(write_error(e));
        }
        if let Err(e) = tokio::fs::rename(&temp, &path).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(write_error(e));
        }
        Ok(())
    }
}

/// A `ChatBackend` that answers from a `ResponseCache` when it can and fills it on success.
pub struct CachedBackend {
    inner: Arc<dyn ChatBackend>,
    cache: ResponseCache,
}

impl CachedBackend {
    pub fn new(inner: Arc<dyn ChatBackend>, cache: ResponseCache) -> CachedBackend {
        CachedBackend { inner, cache }
    }

    /// The response and whether it came from the cache.
    pub async fn chat_cached(
        &self,
        request: &ChatRequest,
    ) -> (Result<ChatResponse, BackendError>, CacheStatus) {
        let call = async { (self.inner.chat(request).await, ()) };
        let (result, (), status) =
            cached_call(Some(&self.cache), &self.inner.id(), request, call).await;
        (result, status)
    }
}

#[async_trait::async_trait]
impl ChatBackend for CachedBackend {
    fn id(&self) -> String {
        self.inner.id()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        self.chat_cached(request).await.0
    }
}

/// Answer `request` from `cache` when it holds a response for `backend_id`, else with `call`,
/// storing a success. `call` also returns what else the caller wants to know of it (its failed
/// attempts), which is empty on a hit. A failed cache write costs a future re-run, not this
/// call, so it is logged and not returned.
pub(crate) async fn cached_call<T: Default>(
    cache: Option<&ResponseCache>,
    backend_id: &str,
    request: &ChatRequest,
    call: impl Future<Output = (Result<ChatResponse, BackendError>, T)>,
) -> (Result<ChatResponse, BackendError>, T, CacheStatus) {
    let Some(cache) = cache else {
        let (result, extra) = call.await;
        return (result, extra, CacheStatus::Miss);
    };
    let key = ResponseCache::key(backend_id, request);
    if let Some(response) = cache.get(&key).await {
        return (Ok(response), T::default(), CacheStatus::Hit);
    }
    let (result, extra) = call.await;
    if let Ok(response) = &result
        && let Err(e) = cache.put(&key, backend_id, response).await
    {
        tracing::warn!("{e}");
    }
    (result, extra, CacheStatus::Miss)
}

#[derive(Serialize)]
struct KeyMaterial<'a> {
    format: u32,
    backend: &'a str,
    request: &'a ChatRequest,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    format: u32,
    key: String,
    backend: String,
    response: ChatResponse,
}
