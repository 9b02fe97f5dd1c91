//! Loopback ports for lab servers and sidecars.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use super::process::poll;

/// A currently free TCP port on 127.0.0.1, never handed out twice by this
/// process.
///
/// Picked at random *below* the kernel's ephemeral range, so the many
/// outgoing connections tests make cannot grab it between this call and
/// the server's bind (a plain bind to port 0 would return an ephemeral
/// port, exposed to exactly that race). Falls back to port 0 if the
/// ephemeral range starts too low to leave room.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<(u64, HashSet<u16>)>> = Mutex::new(None);
    let mut guard = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (rng, given) = guard.get_or_insert_with(|| (seed(), HashSet::new()));
    let low = 10_000u16;
    let high = ephemeral_start().min(32_768);
    for _ in 0..1000 {
        let port = if high > low + 1000 {
            low + (next(rng) % u64::from(high - low)) as u16
        } else {
            match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
                Ok(addr) => addr.port(),
                Err(_) => continue,
            }
        };
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("lab: found no free port on 127.0.0.1 after 1000 tries")
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    poll(timeout, Duration::from_millis(50), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()
    })
    .is_some()
}

fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768)
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

/// xorshift64: plenty for spreading ports.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A TCP forwarder to a server that can be frozen, as a network that silently drops packets:
/// while frozen it moves no byte either way, yet every connection stays open (neither end
/// notices until its own timeouts). For a sidecar cut off from Redis without knowing it.
pub struct Forwarder {
    pub port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Forwarder {
    pub fn start(target: SocketAddr) -> Forwarder {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("forwarder: bind");
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let f = f.clone();
                        std::thread::spawn(move || pump(from, to, &f));
                    }
                }
            }
        });
        Forwarder { port, frozen }
    }

    /// Stops (true) or resumes (false) every byte through the forwarder.
    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes, reading nothing while frozen (the bytes wait in
/// the kernel's buffers, as on a stalled network path).
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &std::sync::atomic::AtomicBool) {
    use std::io::{ErrorKind, Read, Write};
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}
