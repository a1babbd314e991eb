//! `HttpGet` against web servers the tests run on loopback (plain and TLS, canned answers
//! by path): the body back in the ACK and as a result in a file on central, a 404 and a
//! server that never answers as errors naming them, a chunked body put together, HTTPS
//! checked against the roots the node trusts (`SSL_CERT_FILE`).

use crate::common;
use common::{NatsServer, Node};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the test servers answer on `/metrics`: node_exporter's form, not all ASCII.
const METRICS: &str =
    "# HELP node_load1 1m load average (café).\n# TYPE node_load1 gauge\nnode_load1 0.21\n";

/// The parts of the chunked body on `/chunked`, each sent on its own after a pause.
const CHUNKS: [&str; 3] = ["first part, ", "second part, ", "and the end\n"];

/// A web server on a loopback port, plain or TLS, answering each connection on a thread of
/// its own by the request's path; it notes every request's target. Stopped on drop.
struct WebServer {
    port: u16,
    targets: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WebServer {
    fn start(tls: Option<Arc<rustls::ServerConfig>>) -> WebServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (targets, stop) = (targets.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (targets, tls) = (targets.clone(), tls.clone());
                    std::thread::spawn(move || serve(stream, tls, &targets));
                }
            })
        };
        WebServer {
            port,
            targets,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, scheme: &str, host: &str, target: &str) -> String {
        format!("{scheme}://{host}:{}{target}", self.port)
    }

    /// How many requests asked for `target`.
    fn hits(&self, target: &str) -> usize {
        let targets = self.targets.lock().unwrap();
        targets.iter().filter(|t| *t == target).count()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop up to see the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection: TLS first if the server has it, then one request and its answer.
fn serve(stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, targets: &Mutex<Vec<String>>) {
    // A client that never closes cannot keep a thread for ever.
    let _ = stream.set_read_timeout(Some(common::WAIT));
    match tls {
        None => answer(stream, targets),
        Some(config) => {
            let conn = rustls::ServerConnection::new(config).unwrap();
            answer(rustls::StreamOwned::new(conn, stream), targets)
        }
    }
}

/// Reads a request's head and answers by its target's path.
fn answer(mut s: impl Read + Write, targets: &Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return, // a TLS handshake the client refused, or the drop's wake-up call
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split(' ').nth(1).unwrap_or_default().to_string();
    targets.lock().unwrap().push(target.clone());
    let path = target.split('?').next().unwrap_or_default();
    let _ = match path {
        "/metrics" => write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{METRICS}",
            METRICS.len()
        ),
        "/missing" => write!(
            s,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\n\r\nno such page"
        ),
        "/chunked" => {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            for chunk in CHUNKS {
                let _ = s.flush();
                std::thread::sleep(Duration::from_millis(100));
                let _ = write!(s, "{:x}\r\n{chunk}\r\n", chunk.len());
            }
            write!(s, "0\r\n\r\n")
        }
        "/silent" => {
            // Takes the request and never answers: holds the connection until the client
            // gives up and closes it.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            Ok(())
        }
        _ => write!(s, "HTTP/1.1 500 Unexpected\r\nContent-Length: 0\r\n\r\n"),
    };
    let _ = s.flush();
}

/// Central and ship1 on a fresh broker; ship1 run under `wrapper` (e.g. `env VAR=…`).
fn fleet(wrapper: &[&str]) -> (NatsServer, Node, Node) {
    let nats = NatsServer::start();
    let ship1 = Node::start_under(wrapper, "ship1", &nats.address(), &[]);
    let central = Node::start("central", &nats.address(), &[]);
    (nats, ship1, central)
}

/// Sends `HttpGet url` from central to ship1 (with `extra` keys) and waits until it is
/// finished; returns central's replies from ship1's HttpGet, each record's header without
/// its body's length and CRC (`status=Ok\n<body>`).
fn get(central: &Node, url: &str, extra: &str) -> String {
    let ended = central.send_and_wait(&format!(
        r#"[{{"toNode":"ship1","data":["{url}"],"commandOrEvent":"CommandACK","method":"HttpGet"{extra}}}]"#
    ));
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].1, "acked", "{ended:?}");
    central
        .read("replies/ship1.HttpGet.log")
        .split_inclusive('\n')
        .map(|line| match line.split_once(" bytes=") {
            Some((header, _)) if line.starts_with("=== ") => format!("{header}\n"),
            _ => line.to_string(),
        })
        .collect()
}

#[test]
fn the_body_comes_back_in_the_ack_and_as_a_result_in_a_file() {
    let web = WebServer::start(None);
    let (_nats, _ship1, central) = fleet(&[]);
    let url = web.url("http", "127.0.0.1", "/metrics");
    let replies = get(&central, &url, "");
    assert!(replies.contains("from=ship1 status=Ok\n"), "{replies}");
    assert!(replies.ends_with(METRICS), "{replies}");

    // The README's example: the body in a file on central, the ACK saying where it went.
    let ended = central.send_and_wait(&format!(
        r#"[{{"toNode":"ship1","data":["{url}"],"commandOrEvent":"CommandACK","method":"HttpGet","replyMethod":"File","directory":"metrics","fileName":"node_exporter.txt"}}]"#
    ));
    assert_eq!(ended[0].1, "acked", "{ended:?}");
    central.wait_until("metrics/ship1/node_exporter.txt", "held the metrics", |t| {
        t == METRICS
    });
    let replies = central.read("replies/ship1.HttpGet.log");
    assert!(
        replies.contains("result sent to central.File as ship1-"),
        "{replies}"
    );
    assert_eq!(web.hits("/metrics"), 2);
}

#[test]
fn a_404_is_an_error_naming_it() {
    let web = WebServer::start(None);
    let (_nats, _ship1, central) = fleet(&[]);
    let url = web.url("http", "127.0.0.1", "/missing");
    let replies = get(&central, &url, "");
    assert!(
        replies.contains(&format!(
            "from=ship1 status=Error\nGET {url}: 404 Not Found\nno such page\n"
        )),
        "{replies}"
    );
}

#[test]
fn a_chunked_body_comes_back_whole() {
    let web = WebServer::start(None);
    let (_nats, _ship1, central) = fleet(&[]);
    let replies = get(&central, &web.url("http", "127.0.0.1", "/chunked"), "");
    assert!(replies.contains("from=ship1 status=Ok\n"), "{replies}");
    assert!(replies.ends_with(&CHUNKS.concat()), "{replies}");
}

#[test]
fn a_server_that_never_answers_is_an_error_at_the_deadline_and_asked_once() {
    let web = WebServer::start(None);
    let (_nats, _ship1, central) = fleet(&[]);
    // methodTimeout bounds the fetch; the sender waits longer for the ACK.
    let url = web.url("http", "127.0.0.1", "/silent?1");
    let t = Instant::now();
    let replies = get(&central, &url, r#","timeout":20,"methodTimeout":2"#);
    let took = t.elapsed();
    assert!(
        replies.contains(&format!(
            "status=Error\nGET {url}: not done within the 2s deadline (methodTimeout)\n"
        )),
        "{replies}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    // `timeout` alone is the ACK wait: the fetch's deadline leaves a fifth of it for the
    // answer to come back within it, and the URL is fetched once.
    let url = web.url("http", "127.0.0.1", "/silent?2");
    let replies = get(&central, &url, r#","timeout":3,"retries":0"#);
    assert!(
        replies.contains(&format!(
            "status=Error\nGET {url}: not done within the 2.4s deadline (timeout, less the time its reply needs)\n"
        )),
        "{replies}"
    );
    assert_eq!(web.hits("/silent?1"), 1);
    assert_eq!(web.hits("/silent?2"), 1);
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A CA named `name` (its certificate's PEM), and a TLS server configuration with a
/// certificate it signed for 127.0.0.1.
fn ca_and_server(name: &str) -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key.into())
        .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

#[test]
fn https_is_fetched_checking_the_certificate_against_the_roots_the_node_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = ca_and_server("steward HttpGet test CA");
    let web = WebServer::start(Some(tls));
    // Another CA's server: one ship1 does not trust.
    let (_, strangers) = ca_and_server("a CA ship1 does not know");
    let stranger = WebServer::start(Some(strangers));
    // The node's roots are the platform's, or only those in SSL_CERT_FILE (and
    // SSL_CERT_DIR) if set.
    let roots = format!("SSL_CERT_FILE={}", write(dir.path(), "ca.pem", &ca));
    let (_nats, _ship1, central) = fleet(&["env", "-u", "SSL_CERT_DIR", &roots]);

    let replies = get(&central, &web.url("https", "127.0.0.1", "/metrics"), "");
    assert!(replies.contains("from=ship1 status=Ok\n"), "{replies}");
    assert!(replies.ends_with(METRICS), "{replies}");

    let url = stranger.url("https", "127.0.0.1", "/metrics");
    let replies = get(&central, &url, "");
    assert!(
        replies.contains(&format!(
            "status=Error\nGET {url}: TLS with 127.0.0.1 failed: invalid peer certificate: UnknownIssuer"
        )),
        "{replies}"
    );
    // The trusted CA's certificate, for another name than the URL's.
    let url = web.url("https", "localhost", "/metrics");
    let replies = get(&central, &url, "");
    assert!(
        replies.contains(&format!(
            "status=Error\nGET {url}: TLS with localhost failed: invalid peer certificate: NotValidForName"
        )),
        "{replies}"
    );
    assert_eq!(
        stranger.hits("/metrics"),
        0,
        "a request went to a server not trusted"
    );
    assert_eq!(web.hits("/metrics"), 1);
}
