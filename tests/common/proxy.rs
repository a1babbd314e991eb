//! A fault-injecting TCP proxy for the link between a node and its broker: pass bytes,
//! stall (hold them without closing), cut every connection, or cut one mid-frame.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Faults {
    /// The link is down: new connections are closed at once.
    down: AtomicBool,
    stalled: AtomicBool,
    /// Bumped to cut every open connection.
    cuts: AtomicU64,
    /// The next client→server chunk is forwarded half, then the connection is cut.
    cut_mid_frame: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every open connection, so a cut closes them at once.
    open: Mutex<Vec<TcpStream>>,
}

impl Faults {
    fn cut(&self) {
        self.cuts.fetch_add(1, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

pub struct FaultProxy {
    pub port: u16,
    faults: Arc<Faults>,
}

impl FaultProxy {
    pub fn start(target_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        std::thread::spawn(move || {
            while !f.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) if f.down.load(Ordering::SeqCst) => drop(client),
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) {
                            let mut open = f.open.lock().unwrap();
                            if f.down.load(Ordering::SeqCst) {
                                continue; // went down meanwhile: drop both
                            }
                            open.push(client.try_clone().unwrap());
                            open.push(server.try_clone().unwrap());
                            drop(open);
                            let gen = f.cuts.load(Ordering::SeqCst);
                            pipe(
                                client.try_clone().unwrap(),
                                server.try_clone().unwrap(),
                                f.clone(),
                                gen,
                                true,
                            );
                            pipe(server, client, f.clone(), gen, false);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultProxy { port, faults }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Takes the link down (cutting what is open) or brings it back.
    pub fn down(&self, on: bool) {
        self.faults.down.store(on, Ordering::SeqCst);
        if on {
            self.cut();
        }
    }

    pub fn stall(&self, on: bool) {
        self.faults.stalled.store(on, Ordering::SeqCst);
    }

    /// Closes every open connection now.
    pub fn cut(&self) {
        self.faults.cut();
    }

    pub fn cut_mid_frame(&self) {
        self.faults.cut_mid_frame.store(true, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.faults.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, f: Arc<Faults>, gen: u64, upstream: bool) {
    std::thread::spawn(move || {
        from.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = [0u8; 16 * 1024];
        loop {
            // A connection accepted just as the link went down must not survive it.
            if f.cuts.load(Ordering::SeqCst) != gen || f.down.load(Ordering::SeqCst) {
                break;
            }
            if f.stalled.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(_) => break,
            };
            // Read just as the link stalled: held too, not slipped through.
            while f.stalled.load(Ordering::SeqCst) && f.cuts.load(Ordering::SeqCst) == gen {
                std::thread::sleep(Duration::from_millis(10));
            }
            if f.cuts.load(Ordering::SeqCst) != gen || f.down.load(Ordering::SeqCst) {
                break;
            }
            if upstream && n > 1 && f.cut_mid_frame.swap(false, Ordering::SeqCst) {
                let _ = to.write_all(&buf[..n / 2]);
                f.cut();
                break;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
