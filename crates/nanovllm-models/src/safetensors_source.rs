//! [`SafetensorsSource`]: a checkpoint directory's `*.safetensors`, memory-mapped.
//!
//! Which files: the shards named by `model.safetensors.index.json`'s
//! `weight_map` when the index exists, else every `*.safetensors` in the
//! directory (the usual single `model.safetensors`). Headers are parsed and
//! validated once at open (a truncated or corrupt file fails there); tensor
//! bytes are copied out of the mapping only for the slice a rank asks for.
//! Data is little-endian, as the safetensors format specifies. Float tensors (f32, bf16,
//! f16) and FP8 e4m3 tensors (`F8_E4M3`, read as [`DType::F8E4M3`] bytes) are readable.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use nanovllm_kernels::{CpuStorage, DType};
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;
use crate::loader::{buffer_dtype_mismatch, Slice, WeightSource};

const INDEX_FILE: &str = "model.safetensors.index.json";

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8-byte length + JSON header).
    data_start: usize,
}

/// Where one tensor lives: which mapped file, and its header entry.
struct Entry {
    file: usize,
    info: TensorInfo,
}

pub struct SafetensorsSource {
    dir: PathBuf,
    files: Vec<MappedFile>,
    tensors: HashMap<String, Entry>,
}

impl std::fmt::Debug for SafetensorsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsSource")
            .field("dir", &self.dir)
            .field(
                "files",
                &self.files.iter().map(|m| &m.path).collect::<Vec<_>>(),
            )
            .field("num_tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsSource {
    /// Maps the checkpoint in `dir` and indexes its tensors.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index = dir.join(INDEX_FILE);
        let (paths, weight_map) = if index.exists() {
            let weight_map = read_weight_map(&index)?;
            let mut shards: Vec<&String> = weight_map.values().collect();
            shards.sort();
            shards.dedup();
            let paths = shards
                .into_iter()
                .map(|shard| {
                    let path = dir.join(shard);
                    if path.is_file() {
                        Ok(path)
                    } else {
                        Err(ModelError::MissingShard {
                            index: index.clone(),
                            shard: path,
                        })
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            (paths, Some(weight_map))
        } else {
            (list_safetensors(dir)?, None)
        };
        if paths.is_empty() {
            return Err(ModelError::NoCheckpoint {
                dir: dir.to_path_buf(),
            });
        }

        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (file_idx, path) in paths.into_iter().enumerate() {
            let (mapped, infos) = map_file(path)?;
            for (name, info) in infos {
                // With an index, a tensor belongs to the shard the index names.
                let owned_here = weight_map
                    .as_ref()
                    .is_none_or(|m| m.get(&name).is_some_and(|s| dir.join(s) == mapped.path));
                if owned_here {
                    tensors.insert(
                        name,
                        Entry {
                            file: file_idx,
                            info,
                        },
                    );
                }
            }
            files.push(mapped);
        }
        if let Some(weight_map) = &weight_map {
            if let Some((name, shard)) = weight_map.iter().find(|(n, _)| !tensors.contains_key(*n))
            {
                return Err(ModelError::InvalidCheckpoint {
                    path: dir.join(shard),
                    msg: format!(
                        "{INDEX_FILE} places tensor {name} in this shard, but it is not there"
                    ),
                });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            tensors,
        })
    }
}

impl SafetensorsSource {
    fn entry(&self, name: &str) -> Result<&Entry, ModelError> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
                dir: self.dir.clone(),
            })
    }
}

impl WeightSource for SafetensorsSource {
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    fn total_bytes(&self) -> Option<u64> {
        Some(
            self.tensors
                .values()
                .map(|e| (e.info.data_offsets.1 - e.info.data_offsets.0) as u64)
                .sum(),
        )
    }

    fn dtype(&self, name: &str) -> Result<DType, ModelError> {
        match self.entry(name)?.info.dtype {
            Dtype::F32 => Ok(DType::F32),
            Dtype::BF16 => Ok(DType::BF16),
            Dtype::F16 => Ok(DType::F16),
            // FP8 checkpoints' weights, read as bytes ([`crate::Fp8CheckpointSource`]
            // pairs them with their scales).
            Dtype::F8_E4M3 => Ok(DType::F8E4M3),
            other => Err(ModelError::UnsupportedDType {
                name: name.to_owned(),
                dtype: format!("{other:?}"),
            }),
        }
    }

    fn read_into(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        out: &mut CpuStorage,
    ) -> Result<(), ModelError> {
        let entry = self.entry(name)?;
        let info = &entry.info;
        if info.shape != shape {
            return Err(ModelError::WrongShape {
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let dtype = self.dtype(name)?;
        slice.out_shape(name, shape)?;
        let file = &self.files[entry.file];
        let (start, end) = info.data_offsets;
        // In range: the header was validated against the file length at open.
        let bytes = &file.mmap[file.data_start + start..file.data_start + end];
        let elem = dtype.size_in_bytes();
        // The byte range of the tensor read, relative to `bytes`.
        let read = match slice {
            Slice::Full => {
                append(out, name, dtype, bytes)?;
                0..bytes.len()
            }
            Slice::Rows(rows) => {
                let row_bytes = elem * shape[1..].iter().product::<usize>();
                let range = rows.start * row_bytes..rows.end * row_bytes;
                append(out, name, dtype, &bytes[range.clone()])?;
                range
            }
            Slice::Cols(cols) if cols.is_empty() => 0..0,
            Slice::Cols(cols) => {
                // Non-empty columns: out_shape checked cols.end <= shape[1], so rows are non-empty.
                for row in bytes.chunks_exact(elem * shape[1]) {
                    append(out, name, dtype, &row[cols.start * elem..cols.end * elem])?;
                }
                0..bytes.len()
            }
        };
        let at = file.data_start + start;
        file.release(at + read.start..at + read.end);
        Ok(())
    }
}

impl MappedFile {
    /// Drops the mapping's resident pages wholly inside `range` (offsets into the mapping)
    /// from this process: the bytes were copied out, and keeping them mapped would count
    /// the checkpoint in the RSS next to the loaded weights (twice the model for a float
    /// load; the whole float checkpoint next to a quantized one). The page cache keeps
    /// them, so a later read of the same bytes refaults cheaply. Best effort: an error
    /// (a larger page size, another OS) only leaves the pages mapped.
    fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        {
            let start = range.start.next_multiple_of(RELEASE_PAGE);
            let end = range.end / RELEASE_PAGE * RELEASE_PAGE;
            if start < end {
                // SAFETY: MADV_DONTNEED on a read-only, shared file mapping only unmaps
                // pages; any later access, including one through a borrow another thread
                // holds, refaults the same bytes from the file, which is not modified
                // while a model loads (see `map_file`). No byte anyone reads changes.
                let _ = unsafe {
                    self.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = range;
    }
}

/// The page granularity [`MappedFile::release`] rounds to (the mapping starts on a page).
const RELEASE_PAGE: usize = 4096;

/// Appends little-endian `bytes` of `dtype` to `out`.
fn append(out: &mut CpuStorage, name: &str, dtype: DType, bytes: &[u8]) -> Result<(), ModelError> {
    match (out, dtype) {
        (CpuStorage::F32(v), DType::F32) => extend_from_le_bytes(v, bytes),
        (CpuStorage::BF16(v), DType::BF16) => extend_from_le_bytes(v, bytes),
        (CpuStorage::F16(v), DType::F16) => extend_from_le_bytes(v, bytes),
        (CpuStorage::Bytes { dtype: d, bytes: v }, DType::F8E4M3) if *d == DType::F8E4M3 => {
            v.extend_from_slice(bytes)
        }
        (out, dtype) => return Err(buffer_dtype_mismatch(out, name, dtype)),
    }
    Ok(())
}

/// A byte copy, so the mapping's alignment does not matter.
fn extend_from_le_bytes<T: bytemuck::Pod>(v: &mut Vec<T>, bytes: &[u8]) {
    let start = v.len();
    v.resize(start + bytes.len() / std::mem::size_of::<T>(), T::zeroed());
    bytemuck::cast_slice_mut::<T, u8>(&mut v[start..]).copy_from_slice(bytes);
}

fn read_weight_map(index: &Path) -> Result<HashMap<String, String>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|error| ModelError::Io {
        path: index.to_path_buf(),
        error,
    })?;
    let bad = |msg: String| ModelError::InvalidCheckpoint {
        path: index.to_path_buf(),
        msg,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    map.iter()
        .map(|(name, shard)| match shard.as_str() {
            Some(s) => Ok((name.clone(), s.to_owned())),
            None => Err(bad(format!("weight_map[{name:?}] is not a file name"))),
        })
        .collect()
}

fn list_safetensors(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let io = |error| ModelError::Io {
        path: dir.to_path_buf(),
        error,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Maps one file and parses its header (rejecting truncated or inconsistent files).
fn map_file(path: PathBuf) -> Result<(MappedFile, Vec<(String, TensorInfo)>), ModelError> {
    let file = File::open(&path).map_err(|error| ModelError::Io {
        path: path.clone(),
        error,
    })?;
    // SAFETY: the mapping is read-only. As with every mmap-based checkpoint
    // loader, another process truncating the file while we read is undefined;
    // checkpoints are not modified while a model loads.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|error| ModelError::Io {
        path: path.clone(),
        error,
    })?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::InvalidCheckpoint {
            path: path.clone(),
            msg: e.to_string(),
        })?;
    let infos = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.clone()))
        .collect();
    let data_start = 8 + header_len;
    Ok((
        MappedFile {
            path,
            mmap,
            data_start,
        },
        infos,
    ))
}
