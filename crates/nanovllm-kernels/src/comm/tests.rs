//! Collectives of the thread and TCP communicators against naive references,
//! and their failure modes (abort, timeout, dead peer, mismatched collectives).
//! Results must be exact: both sum in f32 in rank order, as the reference does.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::*;
use crate::DType;

/// Rank `r`'s test tensor: `[rows, cols]`, distinct values per rank and element.
fn rank_tensor(rank: usize, rows: usize, cols: usize) -> Tensor {
    let data = (0..rows * cols)
        .map(|i| (rank as f32 + 1.0) * 0.37 + i as f32 * 0.011 - (i % 3) as f32)
        .collect();
    Tensor::from_f32(data, &[rows, cols]).unwrap()
}

/// Runs `f` on every rank, one thread each; returns the results in rank order.
fn on_ranks<C: Sync, T: Send>(comms: Vec<C>, f: impl Fn(&C) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = comms.iter().map(|c| s.spawn(|| f(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A connected TCP group on localhost, index = rank.
fn tcp_group(world: usize, timeout: Duration) -> Vec<TcpCommunicator> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let leaves: Vec<TcpStream> = (1..world)
        .map(|rank| {
            let mut s = TcpStream::connect(addr).unwrap();
            std::io::Write::write_all(&mut s, &[rank as u8]).unwrap();
            s
        })
        .collect();
    let mut accepted: Vec<(u8, TcpStream)> = (1..world)
        .map(|_| {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = [0u8];
            std::io::Read::read_exact(&mut s, &mut r).unwrap();
            (r[0], s)
        })
        .collect();
    accepted.sort_by_key(|(r, _)| *r);
    let mut group =
        vec![
            TcpCommunicator::root(accepted.into_iter().map(|(_, s)| s).collect(), timeout).unwrap(),
        ];
    for (i, s) in leaves.into_iter().enumerate() {
        group.push(TcpCommunicator::leaf(i + 1, world, s, timeout).unwrap());
    }
    group
}

fn naive_sum(world: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut sum = vec![0f32; rows * cols];
    for r in 0..world {
        for (s, v) in sum
            .iter_mut()
            .zip(rank_tensor(r, rows, cols).to_vec_f32().unwrap())
        {
            *s += v;
        }
    }
    sum
}

/// All-reduce, uneven all-gather, broadcast from every root and a barrier on one group.
fn check_collectives<C: Communicator>(comms: Vec<C>) {
    let world = comms.len();
    let (rows, cols) = (3, 5);
    let results = on_ranks(comms, |c| {
        let r = c.rank();
        let mut x = rank_tensor(r, rows, cols);
        c.all_reduce_sum(&mut x).unwrap();
        // Rank r contributes r + 1 columns: uneven widths, concatenated in rank order.
        let gathered = c.all_gather_last_dim(&rank_tensor(r, rows, r + 1)).unwrap();
        let mut roots = Vec::new();
        for root in 0..world {
            let mut b = rank_tensor(r, 2, 2);
            c.broadcast(&mut b, root).unwrap();
            roots.push(b.to_vec_f32().unwrap());
        }
        c.barrier().unwrap();
        // bf16 stays bf16.
        let mut h = rank_tensor(r, 1, 4).to_dtype_cpu(DType::BF16).unwrap();
        c.all_reduce_sum(&mut h).unwrap();
        assert_eq!(h.dtype(), DType::BF16);
        (x.to_vec_f32().unwrap(), gathered, roots)
    });
    let expected_sum = naive_sum(world, rows, cols);
    let total_cols: usize = (1..=world).sum();
    for (rank, (sum, gathered, roots)) in results.iter().enumerate() {
        assert_eq!(
            sum, &expected_sum,
            "world {world} rank {rank}: all_reduce_sum"
        );
        assert_eq!(gathered.shape(), &[rows, total_cols]);
        let g = gathered.to_vec_f32().unwrap();
        for row in 0..rows {
            let mut col = 0;
            for src in 0..world {
                let part = rank_tensor(src, rows, src + 1).to_vec_f32().unwrap();
                for j in 0..=src {
                    assert_eq!(g[row * total_cols + col], part[row * (src + 1) + j]);
                    col += 1;
                }
            }
        }
        for (root, b) in roots.iter().enumerate() {
            assert_eq!(b, &rank_tensor(root, 2, 2).to_vec_f32().unwrap());
        }
    }
}

#[test]
fn thread_collectives_match_naive_references() {
    for world in [1, 2, 3, 4] {
        check_collectives(ThreadCommunicator::group(world));
    }
}

#[test]
fn tcp_collectives_match_naive_references() {
    for world in [1, 2, 3, 4] {
        check_collectives(tcp_group(world, Duration::from_secs(30)));
    }
}

#[test]
fn threads_and_tcp_agree_bit_for_bit() {
    let run = |comms: Vec<Box<dyn Communicator>>| {
        on_ranks(comms, |c| {
            let mut x = rank_tensor(c.rank(), 7, 33);
            c.all_reduce_sum(&mut x).unwrap();
            x.to_vec_f32().unwrap()
        })
    };
    let threads = ThreadCommunicator::group(3)
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Communicator>)
        .collect();
    let tcp = tcp_group(3, Duration::from_secs(30))
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Communicator>)
        .collect();
    assert_eq!(run(threads), run(tcp));
}

#[test]
fn thread_abort_wakes_waiting_ranks_and_breaks_the_group() {
    let comms = ThreadCommunicator::group(3);
    let start = Instant::now();
    let errors = on_ranks(comms, |c| {
        if c.rank() == 2 {
            std::thread::sleep(Duration::from_millis(50));
            c.abort("its model failed to load");
            return String::new();
        }
        let mut x = rank_tensor(c.rank(), 1, 1);
        let err = c.all_reduce_sum(&mut x).unwrap_err().to_string();
        // Later calls fail at once with the same cause.
        let again = c.barrier().unwrap_err().to_string();
        assert!(again.contains("rank 2 aborted"), "{again}");
        err
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    for e in &errors[..2] {
        assert!(
            e.contains("rank 2 aborted the group: its model failed to load"),
            "{e}"
        );
    }
}

#[test]
fn thread_timeout_names_the_missing_rank() {
    let comms = ThreadCommunicator::group_with_timeout(2, Duration::from_millis(100));
    let start = Instant::now();
    let mut x = rank_tensor(0, 1, 1);
    let err = comms[0].all_reduce_sum(&mut x).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(err.contains("ranks [1]"), "{err}");
    assert!(comms[1].broken().is_some());
}

#[test]
fn tcp_dead_peer_fails_every_rank_quickly() {
    let mut comms = tcp_group(3, Duration::from_secs(60));
    // Rank 2's process "dies": its end of the connection closes.
    drop(comms.pop());
    let start = Instant::now();
    let errors = on_ranks(comms, |c| {
        let mut x = rank_tensor(c.rank(), 2, 2);
        c.all_reduce_sum(&mut x).unwrap_err().to_string()
    });
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        errors[0].contains("rank 2 closed its connection"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("rank 0 closed its connection"),
        "{}",
        errors[1]
    );
}

#[test]
fn tcp_silent_peer_times_out() {
    let comms = tcp_group(2, Duration::from_millis(200));
    let start = Instant::now();
    let mut x = rank_tensor(0, 1, 1);
    let err = comms[0].all_reduce_sum(&mut x).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(err.contains("rank 1 did not answer"), "{err}");
    assert!(comms[0].broken().is_some());
}

#[test]
fn tcp_mismatched_collectives_are_an_error() {
    let comms = tcp_group(2, Duration::from_secs(30));
    let errors = on_ranks(comms, |c| {
        if c.rank() == 0 {
            c.barrier().map_err(|e| e.to_string())
        } else {
            let mut x = rank_tensor(1, 1, 1);
            c.all_reduce_sum(&mut x).map_err(|e| e.to_string())
        }
    });
    let root = errors[0].clone().unwrap_err();
    assert!(root.contains("rank 1 is in all_reduce_sum"), "{root}");
    assert!(errors[1].is_err());
}

#[test]
fn tcp_abort_wakes_a_waiting_peer() {
    let comms = tcp_group(2, Duration::from_secs(60));
    let start = Instant::now();
    let errors = on_ranks(comms, |c| {
        if c.rank() == 0 {
            std::thread::sleep(Duration::from_millis(50));
            c.abort("rank 0 failed before the collective");
            return String::new();
        }
        let mut x = rank_tensor(1, 1, 1);
        c.all_reduce_sum(&mut x).unwrap_err().to_string()
    });
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        errors[1].contains("rank 0 closed its connection"),
        "{}",
        errors[1]
    );
}

/// The row order NCCL's gather is finished with equals the last-dim concatenation.
#[test]
fn interleaving_a_rank_major_gather_is_the_last_dim_concat() {
    use crate::cpu::CpuBackend;
    for (rows, world, cols) in [(1, 1, 3), (1, 4, 5), (3, 2, 4), (7, 8, 2)] {
        let parts: Vec<Tensor> = (0..world).map(|r| rank_tensor(r, rows, cols)).collect();
        let rank_major: Vec<f32> = parts.iter().flat_map(|p| p.to_vec_f32().unwrap()).collect();
        let gathered = Tensor::from_f32(rank_major, &[world * rows, cols]).unwrap();
        let order = reduce::interleave_ranks_order(rows, world);
        let order = Tensor::from_u32(order, &[rows * world]).unwrap();
        let got = CpuBackend::new()
            .index_rows(&gathered, &order)
            .unwrap()
            .reshape(&[rows, world * cols])
            .unwrap();
        let want = reduce::concat_last_dim(&parts).unwrap();
        assert_eq!(got.shape(), want.shape());
        assert_eq!(got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
    }
}
