//! Where the hub is, where its cache lives, and who we are: [`HubOptions`], read from the
//! environment variables `huggingface_hub` reads, each settable by the builder methods (tests
//! set them there instead of mutating the process environment).

use std::path::PathBuf;

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How to reach the hub and where to cache what it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubOptions {
    /// Base URL of the hub, without a trailing `/` (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The hub cache, holding `models--owner--name/{blobs,refs,snapshots}`: `HF_HUB_CACHE`,
    /// else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub` (as `huggingface-cli` writes it).
    pub cache_dir: PathBuf,
    /// Bearer token: `HF_TOKEN`, else the file `HF_TOKEN_PATH` or `$HF_HOME/token`
    /// (what `huggingface-cli login` writes).
    pub token: Option<String>,
    /// Never touch the network; only the cache (`HF_HUB_OFFLINE` = 1, true, yes or on).
    pub offline: bool,
    /// A progress bar per file on stderr (drawn only when stderr is a terminal).
    pub progress: bool,
    /// How many times one file's download is resumed after a broken connection before the
    /// error is returned (it can still be resumed by running again).
    pub retries: usize,
}

impl HubOptions {
    /// The settings the environment asks for.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`HubOptions::from_env`] over any variable lookup.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            cache.join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            let path = var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token"));
            let text = std::fs::read_to_string(path).ok()?;
            Some(text.trim().to_owned()).filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
            cache_dir,
            token,
            offline,
            progress: true,
            retries: 3,
        }
        .with_endpoint_normalized()
    }

    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self.with_endpoint_normalized()
    }

    pub fn with_cache_dir(mut self, cache_dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = cache_dir.into();
        self
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    pub fn with_retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// URLs are built as `{endpoint}/{path}`: no trailing slash.
    fn with_endpoint_normalized(mut self) -> Self {
        while self.endpoint.ends_with('/') {
            self.endpoint.pop();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> HubOptions {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubOptions::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let o = from(&[("HOME", "/home/u")]);
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(o.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(o.token, None);
        assert!(!o.offline);
        let o = from(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(o.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
    }

    #[test]
    fn each_variable_is_honoured() {
        let o = from(&[
            ("HF_HOME", "/hf"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_TOKEN", "hf_abc"),
            ("HF_HUB_OFFLINE", "TRUE"),
        ]);
        assert_eq!(o.cache_dir, PathBuf::from("/hf/hub"));
        assert_eq!(o.endpoint, "http://127.0.0.1:9");
        assert_eq!(o.token.as_deref(), Some("hf_abc"));
        assert!(o.offline);
        let o = from(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/elsewhere")]);
        assert_eq!(o.cache_dir, PathBuf::from("/elsewhere"));
        for off in ["0", "false", "no", ""] {
            assert!(!from(&[("HF_HUB_OFFLINE", off)]).offline, "{off}");
        }
    }

    #[test]
    fn the_token_file_is_read_when_hf_token_is_unset() {
        let dir = std::env::temp_dir().join(format!("nanovllm-hub-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "hf_from_file\n").unwrap();
        let home = dir.to_str().unwrap();
        assert_eq!(
            from(&[("HF_HOME", home)]).token.as_deref(),
            Some("hf_from_file")
        );
        assert_eq!(
            from(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")])
                .token
                .as_deref(),
            Some("hf_env")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
