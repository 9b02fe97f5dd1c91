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
