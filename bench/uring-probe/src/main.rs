//! What would one io_uring submission per fan-out turn save, against the server's one
//! non-blocking write per recipient, on loopback TCP in this machine?
//!
//! `recipients` server-side sockets on 127.0.0.1, each with its client end drained through
//! epoll by a reader thread (the load generator's part, on the other core). The writer
//! sends one 120-byte frame (a chat broadcast's size) to every recipient per turn, `turns`
//! turns with `gap_ms` between them, either with one `write(2)` per socket (`write`: what
//! the server's flush does when each connection has one frame) or with every send of the
//! turn in one io_uring submission (`uring`). Modes alternate, `rounds` times each, so both
//! see the same machine. Prints the writer thread's CPU per delivery and a turn's wall time.
//!
//! ```sh
//! cargo run --release -- 1000 1000 5 2   # recipients turns gap_ms rounds: the fan-out room
//! cargo run --release -- 10 20000 0 2    # one room of `bench/run.sh rooms`
//! ```
//!
//! It runs outside the workspace because io_uring's submission queue takes `unsafe`, which
//! the workspace forbids; nothing of edgechat uses it.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A chat broadcast's size on the wire, about.
const FRAME: [u8; 120] = [b'x'; 120];

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which outlives the call.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut spec) };
    assert_eq!(result, 0, "clock_gettime");
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

/// Connected pairs on loopback: the writer's ends, and a thread draining the other ends
/// until `stop` (it returns the bytes it read).
fn connect(recipients: usize, stop: Arc<AtomicBool>) -> (Vec<TcpStream>, JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let mut readers = Vec::with_capacity(recipients);
    let mut writers = Vec::with_capacity(recipients);
    for _ in 0..recipients {
        let reader = TcpStream::connect(address).expect("connect");
        let (writer, _) = listener.accept().expect("accept");
        writer.set_nodelay(true).expect("nodelay");
        // The server's sockets are non-blocking: io_uring then answers EAGAIN, not waits.
        writer.set_nonblocking(true).expect("nonblocking");
        reader.set_nonblocking(true).expect("nonblocking");
        readers.push(reader);
        writers.push(writer);
    }
    let drain = std::thread::spawn(move || {
        let mut poll = mio::Poll::new().expect("epoll");
        let mut streams: Vec<mio::net::TcpStream> = readers
            .into_iter()
            .map(mio::net::TcpStream::from_std)
            .collect();
        for (index, stream) in streams.iter_mut().enumerate() {
            poll.registry()
                .register(stream, mio::Token(index), mio::Interest::READABLE)
                .expect("register");
        }
        let mut events = mio::Events::with_capacity(1024);
        let mut buffer = vec![0u8; 65536];
        let mut total = 0;
        while !stop.load(Ordering::Relaxed) {
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .expect("poll");
            for event in events.iter() {
                let stream = &mut streams[event.token().0];
                while let Ok(read @ 1..) = stream.read(&mut buffer) {
                    total += read;
                }
            }
        }
        total
    });
    (writers, drain)
}

/// One turn: a frame to every socket with a write each.
fn turn_write(sockets: &mut [TcpStream]) {
    for socket in sockets {
        // The reader keeps up, so the socket buffers never fill (asserted).
        socket.write_all(&FRAME).expect("write");
    }
}

/// One turn: a frame to every socket, all in one submission.
fn turn_uring(ring: &mut io_uring::IoUring, sockets: &[TcpStream]) {
    for chunk in sockets.chunks(ring.params().sq_entries() as usize) {
        {
            let mut queue = ring.submission();
            for (index, socket) in chunk.iter().enumerate() {
                let send = io_uring::opcode::Send::new(
                    io_uring::types::Fd(socket.as_raw_fd()),
                    FRAME.as_ptr(),
                    FRAME.len() as u32,
                )
                .build()
                .user_data(index as u64);
                // SAFETY: FRAME is static and every socket outlives the submission, which
                // is waited for in full below.
                unsafe { queue.push(&send).expect("queue sized to the chunk") };
            }
        }
        ring.submit_and_wait(chunk.len()).expect("submit");
        let done = ring
            .completion()
            .inspect(|completion| {
                assert_eq!(completion.result(), FRAME.len() as i32, "a short send")
            })
            .count();
        assert_eq!(done, chunk.len());
    }
}

/// One measured run of a mode.
fn run(mode: &str, recipients: usize, turns: usize, gap: Duration) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let (mut sockets, drain) = connect(recipients, stop.clone());
    let mut ring = io_uring::IoUring::new(4096).expect("io_uring (is it disabled here?)");
    let mut turn_times = Vec::with_capacity(turns);
    let cpu_before = thread_cpu();
    for _ in 0..turns {
        let started = Instant::now();
        match mode {
            "write" => turn_write(&mut sockets),
            _ => turn_uring(&mut ring, &sockets),
        }
        turn_times.push(started.elapsed());
        std::thread::sleep(gap);
    }
    let cpu = thread_cpu() - cpu_before;
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let read = drain.join().expect("reader");
    assert_eq!(read, recipients * turns * FRAME.len(), "every byte arrives");
    turn_times.sort();
    let quantile = |q: f64| turn_times[((turn_times.len() - 1) as f64 * q) as usize];
    format!(
        "| {mode} | {recipients} | {turns} | {:.2} | {:.2} | {:.3} | {:.3} |",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / (recipients * turns) as f64,
        quantile(0.5).as_secs_f64() * 1e3,
        quantile(0.99).as_secs_f64() * 1e3,
    )
}

fn main() {
    let arg = |index: usize, default: u64| {
        std::env::args()
            .nth(index)
            .map_or(default, |value| value.parse().expect("a number"))
    };
    let recipients = arg(1, 1000) as usize;
    let turns = arg(2, 1000) as usize;
    let gap = Duration::from_millis(arg(3, 5));
    let rounds = arg(4, 2);
    println!("| mode | recipients | turns | writer CPU s | µs per delivery | turn p50 ms | turn p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for _ in 0..rounds {
        for mode in ["write", "uring"] {
            println!("{}", run(mode, recipients, turns, gap));
        }
    }
}
