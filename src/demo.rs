//! `steward demo`: a whole fleet on this machine in one command — a nats-server, a central
//! node and one edge node (ship1) — then the seed's first example sent from central to
//! ship1 and the command's output shown as central stored it. Everything it made is left in
//! one folder to look at.

use std::fmt;
use std::fs;
use std::io::{self, Write};
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

/// Children stopped with SIGTERM (so the agents stop cleanly) when the demo ends.
struct Children(Vec<(&'static str, Child)>);

impl Children {
    /// Starts `cmd` as `what`, its output in `<what>.log` in `root`.
    fn spawn(&mut self, root: &Path, what: &'static str, cmd: &mut Command) -> Result<(), Error> {
        let path = root.join(format!("{what}.log"));
        let log = fs::File::create(&path).map_err(create(&path))?;
        let child = cmd
            .stdout(Stdio::from(log.try_clone().map_err(create(&path))?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|source| Error::Start { what, source })?;
        self.0.push((what, child));
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in self.0.iter_mut().rev() {
            // A child we spawned and have not yet reaped: its id is still its own.
            let _ = crate::sys::kill(child.id(), libc::SIGTERM);
            let _ = child.wait();
        }
    }
}

/// Why the demo could not run to its end.
#[derive(Debug)]
pub enum Error {
    NoNatsServer,
    /// A folder or a log file could not be made.
    Create {
        path: PathBuf,
        source: io::Error,
    },
    /// Where this binary is (to start the two nodes) is not known.
    NoBinary(io::Error),
    NoPort(io::Error),
    /// A child (nats-server or a node) could not be started.
    Start {
        what: &'static str,
        source: io::Error,
    },
    /// A child started, and did not get ready in time: its log says why.
    NotReady {
        what: &'static str,
    },
    /// The nodes' keys could not be made or trusted.
    Keys(crate::keys::Error),
    /// The example could not be appended to central's inmsg.txt.
    Append {
        path: PathBuf,
        source: io::Error,
    },
    /// No reply came back in time.
    NoReply,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoNatsServer => f.write_str(
                "nats-server not found; install it with `sudo apt-get install nats-server` (or put it on PATH)",
            ),
            Error::Create { path, source } => {
                write!(f, "cannot create {}: {source}", path.display())
            }
            Error::NoBinary(e) => write!(f, "cannot find the steward binary: {e}"),
            Error::NoPort(e) => write!(f, "no free port: {e}"),
            Error::Start { what, source } => write!(f, "cannot start {what}: {source}"),
            Error::NotReady { what } => write!(f, "{what} did not start; see {what}.log"),
            Error::Keys(e) => write!(f, "{e}"),
            Error::Append { path, source } => {
                write!(f, "cannot append to {}: {source}", path.display())
            }
            Error::NoReply => f.write_str("no reply within 30 s; see central.log and ship1.log"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Create { source, .. }
            | Error::Start { source, .. }
            | Error::Append { source, .. }
            | Error::NoBinary(source)
            | Error::NoPort(source) => Some(source),
            Error::Keys(e) => Some(e),
            Error::NoNatsServer | Error::NotReady { .. } | Error::NoReply => None,
        }
    }
}

impl From<crate::keys::Error> for Error {
    fn from(e: crate::keys::Error) -> Error {
        Error::Keys(e)
    }
}

/// Making `path` failed.
fn create(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Create {
        path: path.to_path_buf(),
        source,
    }
}

/// A new folder of this user's alone under the temporary folder, named so that no one can
/// make it ahead (a name of the process id could be: with a link in it to any file of the
/// user's, to be written over, or a startup file to run as them).
fn fresh_folder() -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let random = crate::keys::random_hex128s(1).pop().unwrap_or_default();
    let root = std::env::temp_dir().join(format!("steward-demo-{}", &random[..16]));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&root)
        .map_err(create(&root))?;
    Ok(root)
}

pub fn run(folder: Option<PathBuf>) -> Result<(), Error> {
    let nats = find_nats_server().ok_or(Error::NoNatsServer)?;
    let root = match folder {
        Some(folder) => {
            fs::create_dir_all(&folder).map_err(create(&folder))?;
            folder
        }
        None => fresh_folder()?,
    };
    let exe = std::env::current_exe().map_err(Error::NoBinary)?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(Error::NoPort)?
        .port();
    println!("demo folder: {}", root.display());

    let mut children = Children(Vec::new());
    let broker = start_broker(&root, &nats, port, &mut children)?;
    trust_each_other(&root)?;
    start_nodes(&root, &exe, &broker, &mut children)?;
    send_example(&root)?;
    show_reply(&root)?;
    drop(children);
    println!("stopped. Logs and data folders are in {}", root.display());
    Ok(())
}

/// Starts nats-server on `port` and waits until it takes connections; returns its address.
fn start_broker(
    root: &Path,
    nats: &Path,
    port: u16,
    children: &mut Children,
) -> Result<String, Error> {
    let broker = format!("127.0.0.1:{port}");
    children.spawn(
        root,
        "nats-server",
        Command::new(nats).args(["-a", "127.0.0.1", "-p", &port.to_string()]),
    )?;
    wait_for(Duration::from_secs(10), || {
        TcpStream::connect(&broker).is_ok().then_some(())
    })
    .ok_or(Error::NotReady {
        what: "nats-server",
    })?;
    println!("started nats-server on {broker}");
    Ok(broker)
}

/// Nodes take messages only from nodes whose keys they trust: gives central and ship1
/// their keys now and has each trust the other, as `steward keys trust NODE KEY` does on a
/// real fleet.
fn trust_each_other(root: &Path) -> Result<(), Error> {
    // Each data folder private, as steward makes one (else it warns).
    for name in ["central", "ship1"] {
        let path = root.join(name);
        crate::files::create_dirs(&path).map_err(create(&path))?;
    }
    let central = crate::files::DataFolder::new(root.join("central"));
    let ship1 = crate::files::DataFolder::new(root.join("ship1"));
    let central_key = crate::keys::Identity::load_or_create(&central.keys())?;
    let ship1_key = crate::keys::Identity::load_or_create(&ship1.keys())?;
    crate::keys::trust(&ship1.keys(), "central", central_key.public_key())?;
    crate::keys::trust(&central.keys(), "ship1", ship1_key.public_key())?;
    println!(
        "ship1 trusts central's key {}, central trusts ship1's key {}",
        central_key.public_key(),
        ship1_key.public_key()
    );
    Ok(())
}

/// Starts central (the error logger) and ship1 on `broker`, each in its own data folder.
fn start_nodes(
    root: &Path,
    exe: &Path,
    broker: &str,
    children: &mut Children,
) -> Result<(), Error> {
    for (name, extra) in [("central", Some("--centralErrorLogger")), ("ship1", None)] {
        let mut cmd = Command::new(exe);
        cmd.arg(format!("--node={name}"))
            .arg(format!("--brokerAddress={broker}"))
            .arg(format!("--dataFolder={}", root.join(name).display()))
            .arg("--promHostAndPort=off")
            .args(extra);
        children.spawn(root, name, &mut cmd)?;
        println!(
            "started node {name} (data in {})",
            root.join(name).display()
        );
    }
    Ok(())
}

/// Appends the seed's first example to central's inmsg.txt.
fn send_example(root: &Path) -> Result<(), Error> {
    let inmsg = root.join("central").join("inmsg.txt");
    wait_for(Duration::from_secs(10), || {
        inmsg.parent().is_some_and(Path::exists).then_some(())
    })
    .ok_or(Error::NotReady { what: "central" })?;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&inmsg)
        .and_then(|mut f| f.write_all(EXAMPLE.as_bytes()))
        .map_err(|source| Error::Append {
            path: inmsg.clone(),
            source,
        })?;
    println!("\nappended to {}:\n{EXAMPLE}", inmsg.display());
    Ok(())
}

/// Waits for ship1's ACK in central's replies, and shows it.
fn show_reply(root: &Path) -> Result<(), Error> {
    let replies = root.join("central/replies/ship1.CLICommand.log");
    let reply = wait_for(Duration::from_secs(30), || {
        fs::read_to_string(&replies).ok().filter(|t| !t.is_empty())
    })
    .ok_or(Error::NoReply)?;
    println!(
        "ship1's ACK, as central stored it in {}:\n{reply}",
        replies.display()
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_demo_s_folder_is_new_and_private() {
        let (a, b) = (fresh_folder().unwrap(), fresh_folder().unwrap());
        assert_ne!(a, b);
        for dir in [&a, &b] {
            let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
            fs::remove_dir(dir).unwrap();
        }
    }
}
