//! The TCP rendezvous at `dist_init_addr`: rank 0 listens, every other rank
//! connects twice (a control channel and a data channel) and says who it is.
//!
//! Failures are fast and say what to fix: an address that does not parse or
//! cannot be bound on this host fails at once; a rank that never shows up
//! fails after the timeout, naming it; a local worker process that exits
//! before connecting fails at once, with its exit status.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::codec::{read_msg, write_msg, Channel, Msg, MAGIC, PROTOCOL_VERSION};
use crate::error::{EngineError, Result};

/// Every rank's two connections; index `rank - 1`.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) control: Vec<TcpStream>,
    pub(crate) data: Vec<TcpStream>,
}

fn bad_addr(addr: &str, why: impl std::fmt::Display) -> EngineError {
    EngineError::TensorParallel(format!(
        "bad --dist-init-addr {addr:?}: {why}; pass host:port, e.g. 127.0.0.1:2333 (rank 0's \
         host, reachable from every node)"
    ))
}

/// The socket addresses `addr` names; an error at once when it names none.
fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| bad_addr(addr, e))?
        .collect();
    if addrs.is_empty() {
        return Err(bad_addr(addr, "it resolves to no address"));
    }
    Ok(addrs)
}

/// Rank 0: listens at `addr` (port 0 picks a free port; see `local_addr`).
pub(crate) fn listen(addr: &str) -> Result<TcpListener> {
    let addrs = resolve(addr)?;
    TcpListener::bind(&addrs[..]).map_err(|e| bad_addr(addr, format!("cannot listen there: {e}")))
}

/// Rank 0: accepts ranks `1..world_size`, both channels each, until `deadline`.
/// `check_alive` runs while waiting (it reports local worker processes that died).
pub(crate) fn accept_ranks(
    listener: &TcpListener,
    world_size: usize,
    deadline: Instant,
    mut check_alive: impl FnMut() -> Result<()>,
) -> Result<Joined> {
    let io = |e: std::io::Error| EngineError::TensorParallel(format!("rendezvous: {e}"));
    listener.set_nonblocking(true).map_err(io)?;
    let n = world_size - 1;
    let mut control: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut data: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    while control.iter().chain(&data).any(Option::is_none) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                stream.set_nonblocking(false).map_err(io)?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(io)?;
                let hello = read_msg(&mut stream);
                let Ok(Msg::Hello {
                    magic: MAGIC,
                    version,
                    rank,
                    channel,
                }) = hello
                else {
                    tracing::warn!(%peer, "ignoring a connection that is not a nanovllm rank");
                    continue;
                };
                if version != PROTOCOL_VERSION {
                    return Err(EngineError::TensorParallel(format!(
                        "rank {rank} at {peer} speaks protocol {version}, rank 0 speaks \
                         {PROTOCOL_VERSION}: run the same nanovllm build on every node"
                    )));
                }
                let rank = rank as usize;
                if rank == 0 || rank >= world_size {
                    return Err(EngineError::TensorParallel(format!(
                        "a worker at {peer} claims rank {rank}, outside 1..{world_size}: check \
                         --tensor-parallel-size, --nnodes and --node-rank on every node"
                    )));
                }
                let slots = if channel == Channel::Control as u8 {
                    &mut control
                } else {
                    &mut data
                };
                if slots[rank - 1].is_some() {
                    return Err(EngineError::TensorParallel(format!(
                        "two workers claim rank {rank} (the second from {peer}): check \
                         --node-rank on every node"
                    )));
                }
                slots[rank - 1] = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                check_alive()?;
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (1..world_size)
                        .filter(|r| control[r - 1].is_none() || data[r - 1].is_none())
                        .collect();
                    return Err(EngineError::TensorParallel(format!(
                        "ranks {missing:?} did not connect to {} in time: start them with \
                         `nanovllm worker` on their nodes (see the README), or raise \
                         tp.timeout_secs",
                        listener
                            .local_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io(e)),
        }
    }
    Ok(Joined {
        control: control.into_iter().flatten().collect(),
        data: data.into_iter().flatten().collect(),
    })
}

/// A worker: connects to rank 0 at `addr` on `channel`, retrying until `deadline`
/// (rank 0 may start after it), and introduces itself.
pub(crate) fn connect(
    addr: &str,
    rank: usize,
    channel: Channel,
    deadline: Instant,
) -> Result<TcpStream> {
    let addrs = resolve(addr)?;
    let mut last_error = None;
    loop {
        for a in &addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(
                a,
                left.clamp(Duration::from_millis(10), Duration::from_secs(5)),
            ) {
                Ok(mut stream) => {
                    let _ = stream.set_nodelay(true);
                    let hello = Msg::Hello {
                        magic: MAGIC,
                        version: PROTOCOL_VERSION,
                        rank: rank as u32,
                        channel: channel as u8,
                    };
                    write_msg(&mut stream, &hello).map_err(|e| {
                        EngineError::TensorParallel(format!(
                            "rank {rank}: greeting rank 0 at {a}: {e}"
                        ))
                    })?;
                    return Ok(stream);
                }
                Err(e) => last_error = Some(e),
            }
        }
        if Instant::now() >= deadline {
            return Err(EngineError::TensorParallel(format!(
                "rank {rank} could not reach rank 0 at {addr} in time ({}): is the engine \
                 (node 0) running, and is --dist-init-addr the same on every node?",
                last_error.map(|e| e.to_string()).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_addresses_fail_at_once_with_the_flag_name() {
        let start = Instant::now();
        for addr in [
            "not-an-address",
            "127.0.0.1",
            "127.0.0.1:99999",
            "203.0.113.7:2333",
        ] {
            let err = listen(addr).unwrap_err().to_string();
            assert!(err.contains("bad --dist-init-addr"), "{addr}: {err}");
            assert!(err.contains(addr), "{addr}: {err}");
        }
        let err = connect(
            "nonsense",
            1,
            Channel::Control,
            Instant::now() + Duration::from_secs(60),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bad --dist-init-addr"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn ranks_join_on_both_channels_in_any_order() {
        let listener = listen("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        let workers: Vec<_> = [
            (2, Channel::Data),
            (1, Channel::Control),
            (2, Channel::Control),
            (1, Channel::Data),
        ]
        .into_iter()
        .map(|(rank, ch)| {
            let addr = addr.clone();
            std::thread::spawn(move || connect(&addr, rank, ch, deadline).unwrap())
        })
        .collect();
        let joined = accept_ranks(&listener, 3, deadline, || Ok(())).unwrap();
        assert_eq!((joined.control.len(), joined.data.len()), (2, 2));
        for w in workers {
            w.join().unwrap();
        }
    }

    #[test]
    fn a_missing_rank_is_named_after_the_deadline() {
        let listener = listen("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let err = accept_ranks(
            &listener,
            2,
            Instant::now() + Duration::from_millis(200),
            || Ok(()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ranks [1] did not connect"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
