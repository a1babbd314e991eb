//! A fault-injecting TCP proxy for the link between a node and its broker: pass bytes,
//! stall (hold them without closing), pass them slowly, cut every connection, or cut one
//! mid-frame.

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
    /// Bytes a second each way, if not 0: a slow link (a satellite's, a cellular one).
    rate: AtomicU64,
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
        FaultProxy::listen(target_port, TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// A proxy passing at most `bytes_per_second` each way, whose end toward the client
    /// holds little (16 KiB of receive buffer, as a link with a small window does), so that
    /// the client's writes meet a full socket as over a real slow link.
    pub fn slow_link(target_port: u16, bytes_per_second: u64) -> FaultProxy {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let size: libc::c_int = 16 * 1024;
        // SAFETY: a valid socket, and an option value of the size given.
        let set = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
        let proxy = FaultProxy::listen(target_port, listener);
        proxy.slow(bytes_per_second);
        proxy
    }

    fn listen(target_port: u16, listener: TcpListener) -> FaultProxy {
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

    /// Passes at most `bytes_per_second` each way from now on (0: as fast as it comes).
    pub fn slow(&self, bytes_per_second: u64) {
        self.faults.rate.store(bytes_per_second, Ordering::SeqCst);
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
            // A slow link reads a little at a time, and waits as long as passing it takes.
            let rate = f.rate.load(Ordering::SeqCst);
            let take = if rate > 0 { 1024 } else { buf.len() };
            let n = match from.read(&mut buf[..take]) {
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
            if rate > 0 {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
