//! The control messages between rank 0 and a worker process, and their byte form.
//!
//! A frame is `len: u32 LE` then `len` bytes: a tag byte and the payload.
//! Integers are little-endian; vectors are a `u32` length then the elements.
//! A step carries the [`ScheduledBatch`] itself: only the tokens computed in
//! this step (one per sequence in decode, never whole prompts once they are
//! cached), their positions and slots, and the block tables.

use std::io::{Read, Write};

use nanovllm_scheduler::{BatchKind, ScheduledBatch, ScheduledSeq};

/// Tells a stray connection from a nanovllm rank, and both ends' protocol versions apart.
pub const MAGIC: u32 = 0x4e56_4c4d; // "NVLM"
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest frame accepted (a batch of 1M tokens is ~40 MB).
const MAX_FRAME: usize = 1 << 30;

/// Which of a worker's two connections to rank 0 this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Control messages ([`Msg`]).
    Control = 0,
    /// Tensor collectives (TCP communicator).
    Data = 1,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Msg {
    /// Worker → rank 0, first on every connection.
    Hello {
        magic: u32,
        version: u8,
        rank: u32,
        channel: u8,
    },
    /// Rank 0 → worker: the engine config (JSON) and, with NCCL, the unique id.
    Config {
        engine_json: String,
        nccl_id: Vec<u8>,
    },
    /// Worker → rank 0: device open; about to join the communicator (NCCL's init blocks
    /// until every rank joins, so rank 0 waits for this first: a rank that cannot open its
    /// device fails the start-up with its error instead of leaving NCCL waiting).
    Joined,
    /// Worker → rank 0: model loaded.
    Loaded,
    /// Rank 0 → worker: size your KV cache with this many blocks.
    Init { num_blocks: u64 },
    /// Worker → rank 0: KV cache allocated, ready for steps.
    Ready,
    /// Rank 0 → worker: run this batch.
    Step(ScheduledBatch),
    /// Worker → rank 0: the step ran.
    Done,
    /// Worker → rank 0: something failed; the worker exits after sending it.
    Failed(String),
    /// Rank 0 → worker: exit now.
    Shutdown,
}

const HELLO: u8 = 1;
const CONFIG: u8 = 2;
const LOADED: u8 = 3;
const INIT: u8 = 4;
const READY: u8 = 5;
const STEP: u8 = 6;
const DONE: u8 = 7;
const FAILED: u8 = 8;
const SHUTDOWN: u8 = 9;
const JOINED: u8 = 10;

/// Writes `msg` as one frame.
pub fn write_msg(w: &mut impl Write, msg: &Msg) -> std::io::Result<()> {
    write_frame(w, &encode_msg(msg)?)
}

/// The frame of a `Step(batch)` message, built from a borrowed batch (encoded once per
/// step, then written to every worker).
pub fn encode_step(batch: &ScheduledBatch) -> std::io::Result<Vec<u8>> {
    let mut e = Enc(Vec::with_capacity(64 + 16 * batch.num_tokens()));
    e.0.extend_from_slice(&[0; 4]);
    e.u8(STEP);
    encode_batch(&mut e, batch);
    frame(e)
}

/// Writes an already encoded frame.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> std::io::Result<()> {
    w.write_all(frame)?;
    w.flush()
}

/// `msg` as one frame: length prefix, tag, payload.
fn encode_msg(msg: &Msg) -> std::io::Result<Vec<u8>> {
    let mut e = Enc(vec![0; 4]);
    match msg {
        Msg::Hello {
            magic,
            version,
            rank,
            channel,
        } => {
            e.u8(HELLO);
            e.u32(*magic);
            e.u8(*version);
            e.u32(*rank);
            e.u8(*channel);
        }
        Msg::Config {
            engine_json,
            nccl_id,
        } => {
            e.u8(CONFIG);
            e.bytes(engine_json.as_bytes());
            e.bytes(nccl_id);
        }
        Msg::Joined => e.u8(JOINED),
        Msg::Loaded => e.u8(LOADED),
        Msg::Init { num_blocks } => {
            e.u8(INIT);
            e.u64(*num_blocks);
        }
        Msg::Ready => e.u8(READY),
        Msg::Step(batch) => {
            e.u8(STEP);
            encode_batch(&mut e, batch);
        }
        Msg::Done => e.u8(DONE),
        Msg::Failed(why) => {
            e.u8(FAILED);
            e.bytes(why.as_bytes());
        }
        Msg::Shutdown => e.u8(SHUTDOWN),
    }
    frame(e)
}

/// Fills in the length prefix of `e`, whose first 4 bytes are reserved for it.
fn frame(mut e: Enc) -> std::io::Result<Vec<u8>> {
    let len = u32::try_from(e.0.len() - 4)
        .map_err(|_| std::io::Error::other("control message larger than 4 GiB"))?;
    e.0[..4].copy_from_slice(&len.to_le_bytes());
    Ok(e.0)
}

/// Reads one frame. A malformed frame is an `InvalidData` error.
pub fn read_msg(r: &mut impl Read) -> std::io::Result<Msg> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(invalid(format!("control frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    let mut d = Dec(&buf);
    let msg = match d.u8()? {
        HELLO => Msg::Hello {
            magic: d.u32()?,
            version: d.u8()?,
            rank: d.u32()?,
            channel: d.u8()?,
        },
        CONFIG => Msg::Config {
            engine_json: String::from_utf8(d.bytes()?.to_vec())
                .map_err(|_| invalid("config is not UTF-8".into()))?,
            nccl_id: d.bytes()?.to_vec(),
        },
        JOINED => Msg::Joined,
        LOADED => Msg::Loaded,
        INIT => Msg::Init {
            num_blocks: d.u64()?,
        },
        READY => Msg::Ready,
        STEP => Msg::Step(decode_batch(&mut d)?),
        DONE => Msg::Done,
        FAILED => Msg::Failed(String::from_utf8_lossy(d.bytes()?).into_owned()),
        SHUTDOWN => Msg::Shutdown,
        tag => return Err(invalid(format!("unknown control message tag {tag}"))),
    };
    if !d.0.is_empty() {
        return Err(invalid(format!(
            "{} trailing bytes in a control frame",
            d.0.len()
        )));
    }
    Ok(msg)
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

fn encode_batch(e: &mut Enc, b: &ScheduledBatch) {
    e.u8(match b.kind {
        BatchKind::Prefill => 0,
        BatchKind::Decode => 1,
    });
    e.u64(b.block_size as u64);
    e.u32(b.seqs.len() as u32);
    for s in &b.seqs {
        e.u64(s.seq_id);
        e.u64(s.num_computed_tokens as u64);
        e.u64(s.num_new_tokens as u64);
        e.u64(s.context_len as u64);
        e.u8(s.sample as u8);
        e.u64(s.num_generated_tokens as u64);
        e.u64(s.prompt_logprob_rows as u64);
    }
    e.u32s(&b.input_ids);
    e.u32s(&b.positions);
    e.u32s(&b.cu_seqlens_q);
    e.u32(b.slot_mapping.len() as u32);
    for &s in &b.slot_mapping {
        e.u64(s as u64);
    }
    e.u32s(&b.block_tables);
    e.u32s(&b.block_table_offsets);
}

fn decode_batch(d: &mut Dec) -> std::io::Result<ScheduledBatch> {
    let kind = match d.u8()? {
        0 => BatchKind::Prefill,
        1 => BatchKind::Decode,
        k => return Err(invalid(format!("unknown batch kind {k}"))),
    };
    let block_size = d.usize()?;
    let num_seqs = d.u32()? as usize;
    let mut seqs = Vec::with_capacity(num_seqs.min(d.0.len() / 49));
    for _ in 0..num_seqs {
        seqs.push(ScheduledSeq {
            seq_id: d.u64()?,
            num_computed_tokens: d.usize()?,
            num_new_tokens: d.usize()?,
            context_len: d.usize()?,
            sample: d.u8()? != 0,
            num_generated_tokens: d.usize()?,
            prompt_logprob_rows: d.usize()?,
        });
    }
    let input_ids = d.u32s()?;
    let positions = d.u32s()?;
    let cu_seqlens_q = d.u32s()?;
    let n = d.u32()? as usize;
    let mut slot_mapping = Vec::with_capacity(n.min(d.0.len() / 8));
    for _ in 0..n {
        slot_mapping.push(d.u64()? as i64);
    }
    Ok(ScheduledBatch {
        kind,
        block_size,
        seqs,
        input_ids,
        positions,
        cu_seqlens_q,
        slot_mapping,
        block_tables: d.u32s()?,
        block_table_offsets: d.u32s()?,
    })
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn u32s(&mut self, v: &[u32]) {
        self.u32(v.len() as u32);
        for &x in v {
            self.u32(x);
        }
    }
}

struct Dec<'a>(&'a [u8]);

impl Dec<'_> {
    fn take<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        if self.0.len() < N {
            return Err(invalid("control frame ends early".into()));
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }
    fn u8(&mut self) -> std::io::Result<u8> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn usize(&mut self) -> std::io::Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| invalid("value overflows usize".into()))
    }
    fn bytes(&mut self) -> std::io::Result<&[u8]> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err(invalid("control frame ends early".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32s(&mut self) -> std::io::Result<Vec<u32>> {
        let raw = self.bytes_n(4)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    /// A `u32` count, then `count * width` bytes.
    fn bytes_n(&mut self, width: usize) -> std::io::Result<&[u8]> {
        let n = self.u32()? as usize * width;
        if self.0.len() < n {
            return Err(invalid("control frame ends early".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_batch() -> ScheduledBatch {
        ScheduledBatch {
            kind: BatchKind::Prefill,
            block_size: 16,
            seqs: vec![
                ScheduledSeq {
                    seq_id: 7,
                    num_computed_tokens: 16,
                    num_new_tokens: 3,
                    context_len: 19,
                    sample: true,
                    num_generated_tokens: 3,
                    prompt_logprob_rows: 0,
                },
                ScheduledSeq {
                    seq_id: u64::MAX,
                    num_computed_tokens: 0,
                    num_new_tokens: 2,
                    context_len: 2,
                    sample: false,
                    num_generated_tokens: 0,
                    prompt_logprob_rows: 2,
                },
            ],
            input_ids: vec![1, 2, 3, 151_000, 5],
            positions: vec![16, 17, 18, 0, 1],
            cu_seqlens_q: vec![0, 3, 5],
            slot_mapping: vec![32, 33, 34, 48, 49],
            block_tables: vec![1, 2, 3],
            block_table_offsets: vec![0, 2, 3],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = vec![
            Msg::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                rank: 3,
                channel: Channel::Data as u8,
            },
            Msg::Config {
                engine_json: "{\"model\": \"m\"}".into(),
                nccl_id: vec![0, 255, 7],
            },
            Msg::Joined,
            Msg::Loaded,
            Msg::Init {
                num_blocks: 1 << 40,
            },
            Msg::Ready,
            Msg::Step(sample_batch()),
            Msg::Step(ScheduledBatch::default()),
            Msg::Done,
            Msg::Failed("rank 1: out of memory".into()),
            Msg::Shutdown,
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            write_msg(&mut wire, m).unwrap();
        }
        let mut r = &wire[..];
        for m in &msgs {
            assert_eq!(&read_msg(&mut r).unwrap(), m);
        }
        assert!(r.is_empty());
    }

    #[test]
    fn a_borrowed_step_encodes_like_an_owned_one() {
        let mut owned = Vec::new();
        write_msg(&mut owned, &Msg::Step(sample_batch())).unwrap();
        assert_eq!(encode_step(&sample_batch()).unwrap(), owned);
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors_not_panics() {
        let mut wire = Vec::new();
        write_msg(&mut wire, &Msg::Step(sample_batch())).unwrap();
        for cut in [0, 3, 4, 10, wire.len() - 1] {
            assert!(read_msg(&mut &wire[..cut]).is_err(), "cut at {cut}");
        }
        // A frame claiming 2^32 - 1 sequences (len, tag, kind, block_size, then the count).
        let mut bad = wire.clone();
        bad[14..18].copy_from_slice(&[0xff; 4]);
        assert!(read_msg(&mut &bad[..]).is_err());
        let garbage = [5u8, 0, 0, 0, 42, 1, 2, 3, 4];
        let err = read_msg(&mut &garbage[..]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
