//! A mock of the Hugging Face Hub for tests (feature `hub-mock`): an HTTP/1.1 server on
//! 127.0.0.1 that answers the requests hf-hub's blocking API makes, in the hub's URL and
//! header layout:
//!
//! - `GET /api/models/{owner}/{name}/revision/{rev}?blobs=true`: the listing (`sha`,
//!   `siblings` with `rfilename`, `size`, `blobId`, `lfs.{sha256,size}`);
//! - `GET /{owner}/{name}/resolve/{rev}/{file}`: a file stored in git is served with
//!   `x-repo-commit` and `etag` (its blob id); an LFS file answers `302` to the LFS store
//!   with `x-repo-commit`, `x-linked-etag` (its sha256) and `x-linked-size`, as the hub does;
//! - `GET /lfs-store/{sha256}`: LFS bytes.
//!
//! Bodies honour `Range: bytes=a-` / `bytes=a-b` (`206` with `Content-Range`). Refusals
//! carry the hub's `X-Error-Code` (`RepoNotFound`, `GatedRepo`, `RevisionNotFound`,
//! `EntryNotFound`). Every request is logged for the tests to inspect. Each connection
//! gets one response and is closed. Test-only: it trusts its input and panics on I/O errors
//! of its own socket setup.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use super::verify::hex;

/// The token a gated mock repo accepts (`Authorization: Bearer hf_mock_token`).
pub const MOCK_TOKEN: &str = "hf_mock_token";

/// One file of a mock repo.
#[derive(Clone, Debug)]
pub struct MockFile {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Stored in LFS (served by redirect, listed with a sha256).
    pub lfs: bool,
}

impl MockFile {
    pub fn sha256(&self) -> String {
        hex(&Sha256::digest(&self.bytes))
    }

    /// A 40-hex stand-in for the git blob id (the hub's etag of a file stored in git).
    pub fn blob_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("blob {}\0", self.bytes.len()));
        h.update(&self.bytes);
        hex(&h.finalize())[..40].to_owned()
    }
}

/// A model repo the mock serves.
#[derive(Clone, Debug)]
pub struct MockRepo {
    pub id: String,
    pub commit: String,
    pub files: Vec<MockFile>,
    /// Refuses (401, `GatedRepo`) requests without [`MOCK_TOKEN`].
    pub gated: bool,
    /// This file's served bytes differ from its listed sha256 (one byte flipped).
    pub corrupt: Option<String>,
    /// The first full download of this file is cut midway (headers promise the whole body).
    pub cut_once: Option<String>,
}

impl MockRepo {
    /// Every file of `dir` (top level), `*.safetensors` in LFS.
    pub fn from_dir(id: &str, dir: &Path) -> Self {
        let mut files: Vec<MockFile> = std::fs::read_dir(dir)
            .expect("a fixture directory")
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.is_file())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                MockFile {
                    lfs: name.ends_with(".safetensors"),
                    bytes: std::fs::read(&p).expect("a readable fixture file"),
                    name,
                }
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            id: id.to_owned(),
            commit: hex(&Sha256::digest(id.as_bytes()))[..40].to_owned(),
            files,
            gated: false,
            corrupt: None,
            cut_once: None,
        }
    }

    pub fn with_file(mut self, name: &str, bytes: &[u8], lfs: bool) -> Self {
        self.files.push(MockFile {
            name: name.to_owned(),
            bytes: bytes.to_vec(),
            lfs,
        });
        self
    }

    pub fn gated(mut self) -> Self {
        self.gated = true;
        self
    }

    pub fn corrupt(mut self, name: &str) -> Self {
        self.corrupt = Some(name.to_owned());
        self
    }

    pub fn cut_once(mut self, name: &str) -> Self {
        self.cut_once = Some(name.to_owned());
        self
    }

    pub fn file(&self, name: &str) -> Option<&MockFile> {
        self.files.iter().find(|f| f.name == name)
    }

    fn listing(&self) -> String {
        let siblings: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|f| {
                let mut s = serde_json::json!({
                    "rfilename": f.name,
                    "size": f.bytes.len(),
                    "blobId": f.blob_id(),
                });
                if f.lfs {
                    s["lfs"] = serde_json::json!({
                        "sha256": f.sha256(),
                        "size": f.bytes.len(),
                        "pointerSize": 134,
                    });
                }
                s
            })
            .collect();
        serde_json::json!({ "id": self.id, "sha": self.commit, "siblings": siblings }).to_string()
    }

    /// What the mock sends for `file`.
    fn served(&self, file: &MockFile) -> Vec<u8> {
        let mut bytes = file.bytes.clone();
        if self.corrupt.as_deref() == Some(file.name.as_str()) && !bytes.is_empty() {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
        }
        bytes
    }
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Path and query.
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

struct State {
    endpoint: String,
    repos: Vec<MockRepo>,
    log: Mutex<Vec<Logged>>,
    cut: Mutex<HashSet<String>>,
}

/// The running server; stopped (connections refused) by [`MockHub::stop`] or on drop.
pub struct MockHub {
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: std::net::SocketAddr,
}

impl MockHub {
    pub fn start(repos: Vec<MockRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port");
        let addr = listener.local_addr().expect("a bound address");
        let state = Arc::new(State {
            endpoint: format!("http://{addr}"),
            repos,
            log: Mutex::default(),
            cut: Mutex::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let state = state.clone();
                        std::thread::spawn(move || serve(&state, stream));
                    }
                }
            })
        };
        Self {
            state,
            stop,
            thread: Some(thread),
            addr,
        }
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        self.state.endpoint.clone()
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// The files whose bytes were requested (not the one-byte metadata probes), by name.
    pub fn bodies_served(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.range.as_deref() != Some("bytes=0-0"))
            .filter_map(|r| self.file_name_of(&r.path))
            .collect()
    }

    fn file_name_of(&self, path: &str) -> Option<String> {
        if let Some(sha) = path.strip_prefix("/lfs-store/") {
            return self.state.repos.iter().find_map(|r| {
                r.files
                    .iter()
                    .find(|f| f.sha256() == sha)
                    .map(|f| f.name.clone())
            });
        }
        let (_, file) = path.split_once("/resolve/")?;
        let (_, name) = file.split_once('/')?;
        // A git-stored file's body comes from `resolve`; an LFS file's from the store.
        let is_lfs = self
            .state
            .repos
            .iter()
            .any(|r| r.file(name).is_some_and(|f| f.lfs));
        (!is_lfs).then(|| name.to_owned())
    }

    /// Stops accepting; later connections are refused.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the accept loop so it sees the flag and drops the listener.
            let _ = TcpStream::connect(self.addr);
            let _ = thread.join();
        }
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(state: &State, mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().expect("a cloneable socket"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut range = None;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(value.trim().to_owned()),
                "authorization" => authorization = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    state.log.lock().unwrap().push(Logged {
        path: path.clone(),
        range: range.clone(),
        authorization: authorization.clone(),
    });
    let authorized = authorization.as_deref() == Some(&format!("Bearer {MOCK_TOKEN}"));
    let response = route(state, &path, range.as_deref(), authorized);
    let _ = response.send(&mut stream);
}

/// A response, possibly cut after `cut_after` body bytes.
struct Response {
    status: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    cut_after: Option<usize>,
}

impl Response {
    fn new(status: &'static str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_after: None,
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn error(status: &'static str, code: &str, message: &str) -> Self {
        let mut r = Response::new(status)
            .header("X-Error-Code", code)
            .header("X-Error-Message", message)
            .header("Content-Type", "application/json");
        r.body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        r
    }

    fn send(self, stream: &mut TcpStream) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {}\r\n", self.status);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        stream.write_all(head.as_bytes())?;
        match self.cut_after {
            Some(n) => {
                stream.write_all(&self.body[..n])?;
                stream.flush()?;
                stream.shutdown(Shutdown::Both)
            }
            None => stream.write_all(&self.body),
        }
    }
}

fn route(state: &State, path: &str, range: Option<&str>, authorized: bool) -> Response {
    let path_only = path.split('?').next().unwrap_or(path);
    if let Some(sha) = path_only.strip_prefix("/lfs-store/") {
        for repo in &state.repos {
            if let Some(file) = repo.files.iter().find(|f| f.lfs && f.sha256() == sha) {
                return body(state, repo, file, range);
            }
        }
        return Response::error("404 Not Found", "EntryNotFound", "no such LFS object");
    }
    if let Some(rest) = path_only.strip_prefix("/api/models/") {
        let Some((id, revision)) = rest.split_once("/revision/") else {
            return Response::error("404 Not Found", "RepoNotFound", "Repository not found");
        };
        let repo = match find_repo(state, id, authorized) {
            Ok(repo) => repo,
            Err(refusal) => return refusal,
        };
        if revision != "main" && revision != repo.commit {
            return Response::error("404 Not Found", "RevisionNotFound", "Invalid rev id");
        }
        let mut r = Response::new("200 OK").header("Content-Type", "application/json");
        r.body = repo.listing().into_bytes();
        return r;
    }
    let Some((id, rest)) = path_only[1..].split_once("/resolve/") else {
        return Response::error("404 Not Found", "RepoNotFound", "Repository not found");
    };
    let repo = match find_repo(state, id, authorized) {
        Ok(repo) => repo,
        Err(refusal) => return refusal,
    };
    let Some((revision, name)) = rest.split_once('/') else {
        return Response::error("404 Not Found", "EntryNotFound", "Entry not found");
    };
    if revision != "main" && revision != repo.commit {
        return Response::error("404 Not Found", "RevisionNotFound", "Invalid rev id");
    }
    let Some(file) = repo.file(name) else {
        return Response::error("404 Not Found", "EntryNotFound", "Entry not found");
    };
    if file.lfs {
        return Response::new("302 Found")
            .header(
                "Location",
                format!("{}/lfs-store/{}", state.endpoint, file.sha256()),
            )
            .header("x-repo-commit", repo.commit.clone())
            .header("x-linked-etag", format!("\"{}\"", file.sha256()))
            .header("x-linked-size", file.bytes.len().to_string())
            .header("ETag", format!("\"{}\"", file.blob_id()));
    }
    body(state, repo, file, range)
        .header("x-repo-commit", repo.commit.clone())
        .header("ETag", format!("\"{}\"", file.blob_id()))
}

/// The repo `id`, or the refusal the hub would send.
fn find_repo<'a>(state: &'a State, id: &str, authorized: bool) -> Result<&'a MockRepo, Response> {
    match state.repos.iter().find(|r| r.id == id) {
        None => Err(Response::error(
            "404 Not Found",
            "RepoNotFound",
            "Repository not found",
        )),
        Some(repo) if repo.gated && !authorized => Err(Response::error(
            "401 Unauthorized",
            "GatedRepo",
            "Access to this model is restricted: accept its conditions and authenticate",
        )),
        Some(repo) => Ok(repo),
    }
}

/// A file's bytes, honouring `Range`, cut midway the first time when the repo says so.
fn body(state: &State, repo: &MockRepo, file: &MockFile, range: Option<&str>) -> Response {
    let bytes = repo.served(file);
    let total = bytes.len();
    let (start, end) = match range.and_then(|r| r.strip_prefix("bytes=")) {
        None => (0, total),
        Some(spec) => {
            let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
            let start: usize = a.parse().unwrap_or(0);
            let end = b.parse::<usize>().map_or(total, |b| (b + 1).min(total));
            if start >= total {
                return Response::new("416 Range Not Satisfiable")
                    .header("Content-Range", format!("bytes */{total}"));
            }
            (start, end)
        }
    };
    let mut r = if range.is_some() {
        Response::new("206 Partial Content").header(
            "Content-Range",
            format!("bytes {start}-{}/{total}", end - 1),
        )
    } else {
        Response::new("200 OK")
    };
    r.body = bytes[start..end].to_vec();
    let whole_body = end - start > 1;
    if whole_body && repo.cut_once.as_deref() == Some(file.name.as_str()) {
        let first = state.cut.lock().unwrap().insert(file.name.clone());
        if first {
            r.cut_after = Some(r.body.len() / 2);
        }
    }
    r
}
