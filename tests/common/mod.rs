//! Helpers shared by the tests that talk to a server on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP relay to a server that counts the bytes sent to it and, while `budget` is
/// not negative, cuts every connection once that many more bytes have gone through.
pub struct Relay {
    pub port: u16,
    pub budget: Arc<AtomicI64>,
    pub sent: Arc<AtomicU64>,
}

impl Relay {
    pub fn start(to: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let budget = Arc::new(AtomicI64::new(-1));
        let sent = Arc::new(AtomicU64::new(0));
        let (b, s) = (budget.clone(), sent.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { continue };
                let Ok(up) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let cut = Arc::new(AtomicBool::new(false));
                pipe(
                    client.try_clone().unwrap(),
                    up.try_clone().unwrap(),
                    Some((b.clone(), s.clone())),
                    cut.clone(),
                );
                pipe(up, client, None, cut);
            }
        });
        Relay { port, budget, sent }
    }
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    count: Option<(Arc<AtomicI64>, Arc<AtomicU64>)>,
    cut: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some((budget, sent)) = &count {
                let b = budget.load(Ordering::SeqCst);
                if b >= 0 {
                    if (n as i64) > b {
                        budget.store(0, Ordering::SeqCst);
                        cut.store(true, Ordering::SeqCst);
                    } else {
                        budget.fetch_sub(n as i64, Ordering::SeqCst);
                    }
                }
                if cut.load(Ordering::SeqCst) {
                    break;
                }
                sent.fetch_add(n as u64, Ordering::SeqCst);
            }
            if cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
