//! The broker link itself: the vendored client against a server of the test's own that
//! says only what the test tells it (the handshake, then nothing unless told), so a link
//! that takes no more bytes can be held exactly where a test wants it.

use crossbeam_channel::{Receiver, Sender};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A NATS server that completes each client's handshake and then hands the connection to
/// the test, reading nothing more from it unless the test does.
struct SilentServer {
    port: u16,
    connections: Receiver<TcpStream>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, connections) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            // The first connection's, then the connect's own flush.
            let mut pings = 2;
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                if handshake(stream, port, pings, &tx).is_err() {
                    return;
                }
                pings = 1;
            }
        });
        SilentServer { port, connections }
    }

    fn address(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn next(&self) -> TcpStream {
        self.connections
            .recv_timeout(crate::common::WAIT)
            .expect("a client connected")
    }
}

/// INFO, then lines read one by one (nothing past them) and each of `pings` PINGs answered.
fn handshake(
    mut stream: TcpStream,
    port: u16,
    pings: usize,
    to: &Sender<TcpStream>,
) -> std::io::Result<()> {
    write!(
        stream,
        "INFO {{\"server_id\":\"silent\",\"version\":\"2.10.0\",\"proto\":1,\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576,\"client_id\":1,\"go\":\"go1.22\"}}\r\n"
    )?;
    let mut reader = BufReader::with_capacity(1, stream.try_clone()?);
    let mut line = String::new();
    for _ in 0..pings {
        while line != "PING\r\n" {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
        }
        line.clear();
        stream.write_all(b"PONG\r\n")?;
    }
    let _ = to.send(stream);
    Ok(())
}

/// A link that takes no more bytes (the peer reads nothing, and never closes): a message
/// larger than the client's write buffer was written to the socket with no bound, holding
/// the client's write lock, so the send hung for as long as the link did (a network that
/// drops everything: TCP's retransmissions, some 15 minutes), every other send queued
/// behind it, and so did the reader thread at the server's next PING, so no subscription
/// received anything either. A write that makes no progress for its bound (5 s) fails and
/// ends the connection (the client makes it again), and what was read meanwhile is
/// delivered.
#[test]
fn a_large_message_on_a_link_that_takes_nothing_gives_up_within_its_bound() {
    let server = SilentServer::start();
    let conn = nats::Options::new().connect(server.address()).unwrap();
    let news = conn.subscribe("news").unwrap();
    let mut first = server.next();
    let (done, sent) = crossbeam_channel::bounded(1);
    let publisher = conn.clone();
    std::thread::spawn(move || {
        // Sent as Broker::publish sends a request: written out, not waited on.
        let payload = vec![b'x'; 256 * 1024];
        let res = (0..256).try_for_each(|_| {
            publisher.publish("big", &payload)?;
            publisher.flush_written(Duration::from_secs(1))
        });
        let _ = done.send(res);
    });
    // The server asks whether the client is alive, and has a message for it.
    first
        .write_all(b"PING\r\nMSG news 1 5\r\nhello\r\n")
        .unwrap();
    let res = sent
        .recv_timeout(2 * crate::common::WAIT)
        .expect("the sends on a link that takes nothing gave up within their bound");
    assert!(res.is_err(), "sent 64 MiB to a server that read none of it");
    // The connection it gave up on is ended, and made again: not kept for reading while
    // every send waits in the client's reconnect buffer for a reconnect that does not come.
    server.next();
    let m = news
        .next_timeout(Duration::from_secs(10))
        .expect("a message read while a send was stuck is delivered");
    assert_eq!(m.data, b"hello");
}

/// Reads `stream` as a server would, PONGs held back: from the PUB on `subject` on it stops
/// reading at the next PING and answers only the PINGs read before that PUB, then closes, as
/// a connection cut after them would leave it. Returns how many it answered.
fn answer_pings_before(stream: TcpStream, subject: &str) -> usize {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (mut pings, mut seen) = (0, false);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return 0, // the client ended the connection
            Ok(_) => {}
        }
        if line == "PING\r\n" {
            if seen {
                break;
            }
            pings += 1;
        } else if let Some(args) = line.strip_prefix("PUB ") {
            let args: Vec<&str> = args.split_whitespace().collect();
            let len: usize = args.last().unwrap().parse().unwrap();
            let mut payload = vec![0; len + 2];
            if std::io::Read::read_exact(&mut reader, &mut payload).is_err() {
                return 0;
            }
            seen |= args[0] == subject;
        }
    }
    let mut stream = stream;
    let _ = stream.write_all("PONG\r\n".repeat(pings).as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Both);
    pings
}

/// A flush whose PING could not be written (the link took nothing for its timeout) left the
/// PING in the client's buffer with no waiter queued for it: the connection went on, the
/// PING went out once the link flowed, and its PONG completed the next flush's waiter. That
/// flush reported its message arrived though the server had not read it (here the
/// connection ends right after the PINGs before it): a NACK kind's message lost, counted
/// sent. Now a write that fails ends the connection, and the next flush is answered by its
/// own PONG or not at all.
#[test]
fn a_ping_a_flush_could_not_write_answers_no_later_flush() {
    let server = SilentServer::start();
    let conn = nats::Options::new().connect(server.address()).unwrap();
    let first = server.next();
    // Flushes, each waiting 50 ms for a PONG that does not come, until one cannot write.
    let filler = vec![b'x'; 30 * 1024];
    let timeout = Duration::from_millis(50);
    let failed = (0..10_000).find_map(|_| {
        conn.publish("filler", &filler).unwrap();
        match conn.flush_timeout(timeout) {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => None,
            res => Some(res),
        }
    });
    assert!(matches!(failed, Some(Err(_))), "{failed:?}");
    // The link flows again, at once, and the server reads what comes.
    let (answered, read) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = answered.send(answer_pings_before(first, "lost"));
        // A client that ended the connection makes another: the same there.
        if let Ok(next) = server.connections.recv_timeout(crate::common::WAIT) {
            answer_pings_before(next, "lost");
        }
    });
    conn.publish("lost", b"never read by the server").ok();
    let res = conn.flush_timeout(Duration::from_secs(5));
    let answered = read.recv_timeout(crate::common::WAIT).unwrap();
    assert!(
        res.is_err(),
        "a flush reported its message arrived on the PONG to another PING ({answered} PINGs answered, all before it)"
    );
}

/// A link cut without a FIN or a reset (a satellite's dropout; here a server that goes on
/// holding the connection and says nothing, as a modem that acknowledges bytes on the
/// server's behalf does): the client's PINGs were sent only after two minutes without a
/// flush, which a client that publishes now and then never has, so only TCP's own timeout
/// ended it, many minutes later, or, behind such a modem, nothing. Now an interval in which
/// nothing came and no bytes moved sends a PING, and a second one ends the connection; the
/// client makes it again.
#[test]
fn a_link_that_answers_nothing_is_taken_as_cut_and_made_again() {
    let server = SilentServer::start();
    let (said, errors) = crossbeam_channel::unbounded();
    let interval = Duration::from_millis(200);
    let _conn = nats::Options::new()
        .ping_interval(interval)
        .error_callback(move |e| {
            let _ = said.send(e.to_string());
        })
        .connect(server.address())
        .unwrap();
    let first = server.next();
    let silent_since = std::time::Instant::now();
    let _second = server.next();
    let took = silent_since.elapsed();
    // Not at the first silent check: its PING had an interval to be answered.
    assert!(took > interval * 3 / 2, "{took:?}");
    // The first connection got the PING, then was closed by the client.
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut &first, &mut seen).unwrap();
    assert!(seen.contains("PING\r\n"), "{seen:?}");
    let said: Vec<String> = errors.try_iter().collect();
    assert!(
        said.iter().any(|e| e.contains("taken as cut")),
        "the client said why it connected again: {said:?}"
    );
}

/// A message that comes in slowly (a large one over a slow link) is bytes moving, though no
/// whole operation is read for many intervals: the link is not taken as cut under it.
#[test]
fn a_message_coming_in_slowly_keeps_the_link() {
    let server = SilentServer::start();
    let conn = nats::Options::new()
        .ping_interval(Duration::from_millis(100))
        .connect(server.address())
        .unwrap();
    let news = conn.subscribe("news").unwrap();
    let mut first = server.next();
    // 64 KiB over 1.6 s: sixteen intervals.
    let len = 64 * 1024;
    let mut written = write!(first, "MSG news 1 {len}\r\n");
    for _ in 0..32 {
        written = written.and_then(|()| first.write_all(&[b'x'; 2048]));
        std::thread::sleep(Duration::from_millis(50));
    }
    written = written.and_then(|()| first.write_all(b"\r\n"));
    assert!(
        written.is_ok(),
        "the client closed the link under a message coming in: {written:?}"
    );
    let m = news
        .next_timeout(crate::common::WAIT)
        .expect("the message came in whole");
    assert_eq!(m.data.len(), len);
    assert!(
        server.connections.try_recv().is_err(),
        "the client connected again while a message came in"
    );
}

/// A server (or a link) that takes the connection and then says nothing: connecting waited
/// for its INFO for ever, so the client's reconnecting stopped there until TCP gave up, if
/// it ever did. Each read of the handshake now waits two ping intervals at most.
#[test]
fn a_server_that_says_nothing_while_connecting_is_given_up() {
    // Connections wait in the listener's backlog, taken and never answered.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("nats://{}", listener.local_addr().unwrap());
    let (done, connected) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let res = nats::Options::new()
            .ping_interval(Duration::from_millis(200))
            .connect(address);
        let _ = done.send(res.map(drop).map_err(|e| e.to_string()));
    });
    let res = connected
        .recv_timeout(crate::common::WAIT)
        .expect("connecting to a server that says nothing gave up");
    let err = res.unwrap_err();
    assert!(err.contains("said nothing within 400ms"), "{err}");
    drop(listener);
}
