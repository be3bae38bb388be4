//! A UDP relay between cluster nodes, so a test can cut a node off its peers: each
//! node's peers dial the relay's port for it, and the relay forwards datagrams to the
//! node's real peer port (and the answers back), unless the node is isolated. Client
//! traffic does not pass through it, so an isolated node still serves clients — the
//! minority side of a partition.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(50);

/// Relays for a set of nodes. Stops its threads on drop.
#[derive(Debug)]
pub struct Relays {
    /// Real peer addresses of isolated nodes.
    isolated: Arc<Mutex<HashSet<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relays {
    /// No relays yet.
    pub fn new() -> Relays {
        Relays {
            isolated: Arc::new(Mutex::new(HashSet::new())),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    /// Relays datagrams sent to `front` (a loopback port it binds) to `target`.
    pub fn add(&mut self, front: SocketAddr, target: SocketAddr) {
        let sock = UdpSocket::bind(front).expect("bind the relay port");
        sock.set_read_timeout(Some(POLL)).expect("read timeout");
        let sock = Arc::new(sock);
        let isolated = Arc::clone(&self.isolated);
        let stop = Arc::clone(&self.stop);
        let stop2 = Arc::clone(&self.stop);
        let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, Arc<UdpSocket>)>();
        let front_sock = Arc::clone(&sock);
        let iso = Arc::clone(&isolated);
        // Answers: one thread polls every upstream socket for what the target sends
        // back to each source.
        self.threads.push(std::thread::spawn(move || {
            let mut ups: Vec<(SocketAddr, Arc<UdpSocket>)> = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                while let Ok(u) = rx.try_recv() {
                    ups.push(u);
                }
                if ups.is_empty() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                for (src, up) in &ups {
                    while let Ok(n) = up.recv(&mut buf) {
                        let blocked = {
                            let iso = iso.lock().unwrap();
                            iso.contains(&target) || iso.contains(src)
                        };
                        if !blocked {
                            let _ = front_sock.send_to(&buf[..n], src);
                        }
                    }
                }
            }
        }));
        self.threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, src)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let blocked = {
                    let iso = isolated.lock().unwrap();
                    iso.contains(&target) || iso.contains(&src)
                };
                if blocked {
                    continue;
                }
                let up = {
                    let mut ups = upstreams.lock().unwrap();
                    ups.entry(src)
                        .or_insert_with(|| {
                            let u = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
                            u.connect(target).expect("connect upstream");
                            u.set_nonblocking(true).expect("nonblocking");
                            let u = Arc::new(u);
                            let _ = tx.send((src, Arc::clone(&u)));
                            u
                        })
                        .clone()
                };
                let _ = up.send(&buf[..n]);
            }
        }));
    }

    /// Cuts the node whose real peer address is `node` off every relay, both ways.
    pub fn isolate(&self, node: SocketAddr) {
        self.isolated.lock().unwrap().insert(node);
    }

    /// Heals every cut.
    pub fn heal(&self) {
        self.isolated.lock().unwrap().clear();
    }
}

impl Default for Relays {
    fn default() -> Self {
        Relays::new()
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
