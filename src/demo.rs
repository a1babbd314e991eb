//! `steward demo`: a whole fleet on this machine in one command — a nats-server, a central
//! node and one edge node (ship1) — then the seed's first example sent from central to
//! ship1 and the command's output shown as central stored it. Everything it made is left in
//! one folder to look at.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXAMPLE: &str = r#"[
    {
        "toNode": "ship1",
        "data": ["bash","-c","ls -l ../"],
        "commandOrEvent":"CommandACK",
        "method":"CLICommand"
    }
]
"#;

/// Children killed (agents with SIGTERM, so they stop cleanly) when the demo ends.
struct Children(Vec<(&'static str, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in self.0.iter_mut().rev() {
            // A child we spawned and have not yet reaped: its id is still its own.
            let _ = crate::sys::kill(child.id(), libc::SIGTERM);
            let _ = child.wait();
        }
    }
}

pub fn run(folder: Option<PathBuf>) -> Result<(), String> {
    let nats = find_nats_server().ok_or(
        "nats-server not found; install it with `sudo apt-get install nats-server` (or put it on PATH)",
    )?;
    let root = folder.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("steward-demo-{}", std::process::id()))
    });
    fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the steward binary: {e}"))?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let broker = format!("127.0.0.1:{port}");
    println!("demo folder: {}", root.display());

    let mut children = Children(Vec::new());
    let spawn = |what: &'static str, cmd: &mut Command| -> Result<(&'static str, Child), String> {
        let log = fs::File::create(root.join(format!("{what}.log"))).map_err(|e| e.to_string())?;
        let child = cmd
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        Ok((what, child))
    };
    children.0.push(spawn(
        "nats-server",
        Command::new(&nats).args(["-a", "127.0.0.1", "-p", &port.to_string()]),
    )?);
    wait_for(Duration::from_secs(10), || {
        TcpStream::connect(&broker).is_ok().then_some(())
    })
    .ok_or("nats-server did not start; see nats-server.log")?;
    println!("started nats-server on {broker}");
    // Nodes take messages only from nodes whose keys they trust: give both their keys now
    // and have each trust the other, as `steward keys trust NODE KEY` does on a real fleet.
    // Each data folder private, as steward makes one (else it warns).
    for name in ["central", "ship1"] {
        crate::files::create_dirs(&root.join(name))
            .map_err(|e| format!("cannot create {}: {e}", root.join(name).display()))?;
    }
    let central = crate::files::DataFolder::new(root.join("central"));
    let ship1 = crate::files::DataFolder::new(root.join("ship1"));
    let central_key =
        crate::keys::Identity::load_or_create(&central.keys()).map_err(|e| e.to_string())?;
    let ship1_key =
        crate::keys::Identity::load_or_create(&ship1.keys()).map_err(|e| e.to_string())?;
    crate::keys::trust(&ship1.keys(), "central", central_key.public_key())
        .map_err(|e| e.to_string())?;
    crate::keys::trust(&central.keys(), "ship1", ship1_key.public_key())
        .map_err(|e| e.to_string())?;
    println!(
        "ship1 trusts central's key {}, central trusts ship1's key {}",
        central_key.public_key(),
        ship1_key.public_key()
    );
    for (name, extra) in [("central", Some("--centralErrorLogger")), ("ship1", None)] {
        let mut cmd = Command::new(&exe);
        cmd.arg(format!("--node={name}"))
            .arg(format!("--brokerAddress={broker}"))
            .arg(format!("--dataFolder={}", root.join(name).display()))
            .arg("--promHostAndPort=off")
            .args(extra);
        let name: &'static str = if name == "central" {
            "central"
        } else {
            "ship1"
        };
        children.0.push(spawn(name, &mut cmd)?);
        println!(
            "started node {name} (data in {})",
            root.join(name).display()
        );
    }

    let inmsg = root.join("central").join("inmsg.txt");
    wait_for(Duration::from_secs(10), || {
        inmsg.parent().is_some_and(Path::exists).then_some(())
    })
    .ok_or("central did not start; see central.log")?;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&inmsg)
        .and_then(|mut f| f.write_all(EXAMPLE.as_bytes()))
        .map_err(|e| format!("cannot append to {}: {e}", inmsg.display()))?;
    println!("\nappended to {}:\n{EXAMPLE}", inmsg.display());

    let replies = root.join("central/replies/ship1.CLICommand.log");
    let reply = wait_for(Duration::from_secs(30), || {
        fs::read_to_string(&replies).ok().filter(|t| !t.is_empty())
    })
    .ok_or("no reply within 30 s; see central.log and ship1.log")?;
    println!(
        "ship1's ACK, as central stored it in {}:\n{reply}",
        replies.display()
    );
    drop(children);
    println!("stopped. Logs and data folders are in {}", root.display());
    Ok(())
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find_nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}
