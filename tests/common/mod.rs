//! Helpers shared by the tests that talk to a server on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
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

/// A server a script of the project starts on a free loopback port (`SCRIPT start PORT`
/// prints its state directory) and stops when dropped (`SCRIPT stop DIR`):
/// scripts/test-registry.sh, scripts/test-moto.sh.
pub struct Server {
    script: PathBuf,
    pub state: PathBuf,
    pub port: u16,
}

impl Server {
    pub fn start(script: &str) -> Server {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script);
        let port = free_port();
        let out = Command::new("bash")
            .arg(&script)
            .args(["start", &port.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let state = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .into();
        Server {
            script,
            state,
            port,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.state)
            .status();
    }
}

/// imagebuild in `project` with its own cache, no standard input, these environment
/// variables set.
pub fn imagebuild(
    project: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagebuild"));
    cmd.arg("-C")
        .arg(project)
        .arg("--cache-dir")
        .arg(project.join("cache"))
        .args(args)
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Its standard output; the test fails with its standard error when it failed.
pub fn stdout_ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "imagebuild failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
