//! Every system call steward makes outside the standard library, each behind a small safe
//! function: typed arguments, an [`io::Result`] (or what the call can only answer), and the
//! raw descriptors and pointers kept inside.
//!
//! Why one file: this is all of steward's `unsafe` code. The rest of the crate is
//! `#![deny(unsafe_code)]` (and the binary `forbid`s it), so auditing the crate's memory
//! safety means reading this file: each `unsafe` block says, in its `SAFETY:` comment, why
//! the call cannot touch memory it should not. A new system call is a new function here.
//!
//! Linux only, like steward. The file calls use their 64-bit forms (`fallocate64`): on
//! armv7, `off_t` is 32 bits and would cut offsets past 2 GiB.

#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::Duration;

/// `-1` (and `errno`) as an [`io::Error`], any other result as `Ok`.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A path as the C string the kernel takes; a path with a NUL byte in it is no path.
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// A process id as `kill` takes it. Zero and the negative numbers a large `u32` would
/// become mean "my process group", "every process I may signal" (-1) or a whole group:
/// never what a caller holding a child's id means, so they are refused.
fn pid(id: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(id) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a process id: {id}"),
        )),
    }
}

/// Bytes available to this user, and the size, of the filesystem holding `path`
/// (`statvfs`).
pub fn free_bytes(path: &Path) -> io::Result<(u64, u64)> {
    let path = c_path(path)?;
    // SAFETY: statvfs is a plain C struct of integers, for which all zeroes is a value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid, writable statvfs for the call.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    let unit = st.f_frsize as u64;
    Ok((
        (st.f_bavail as u64).saturating_mul(unit),
        (st.f_blocks as u64).saturating_mul(unit),
    ))
}

/// Whether the filesystem holding `path` keeps a file's inode number for as long as the
/// file lives, across mounts (`statfs`'s type, against a list of those known to: ext2/3/4,
/// XFS, Btrfs, F2FS, tmpfs). Others (FAT, exFAT, many FUSE filesystems) may number a file
/// anew at each mount.
pub fn keeps_inode_numbers(path: &Path) -> bool {
    const KNOWN: [i64; 5] = [
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // XFS
        0x9123_683E, // Btrfs
        0xF2F5_2010, // F2FS
        0x0102_1994, // tmpfs
    ];
    fs_type(path).is_some_and(|kind| KNOWN.contains(&kind))
}

/// Whether a write lease on a file under `path` ([`set_lease`]) tells whether another
/// process has it open. Not on NFS (v4) or SMB: there the client grants a lease only under
/// a delegation (an oplock) from the server, and refuses it with `EAGAIN`, as if another
/// process held the file, whenever it has none (for a file opened to be read, always).
pub fn leases_tell_holders(path: &Path) -> bool {
    const SERVERS: [i64; 4] = [NFS, SMB, CIFS, SMB2];
    !fs_type(path).is_some_and(|kind| SERVERS.contains(&kind))
}

/// Whether inotify on a folder under `path` hears of every write to its files. Not where
/// the files are another host's (NFS, SMB, 9p) or a user-space filesystem's (FUSE, sshfs):
/// there it hears of this host's writes alone, and an append made elsewhere makes no event.
pub fn watch_hears_every_write(path: &Path) -> bool {
    const ELSEWHERE: [i64; 6] = [NFS, SMB, CIFS, SMB2, NINE_P, FUSE];
    !fs_type(path).is_some_and(|kind| ELSEWHERE.contains(&kind))
}

// Filesystems' magic numbers (`statfs`'s `f_type`).
const NFS: i64 = 0x6969;
const SMB: i64 = 0x517B;
const CIFS: i64 = 0xFF53_4D42;
const SMB2: i64 = 0xFE53_4D42;
const NINE_P: i64 = 0x0102_1997;
const FUSE: i64 = 0x6573_5546;

/// The type of the filesystem holding `path` (`statfs`'s magic number), if it can be told.
fn fs_type(path: &Path) -> Option<i64> {
    let path = c_path(path).ok()?;
    // SAFETY: statfs is a plain C struct of integers, for which all zeroes is a value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid, writable statfs for the call.
    check(unsafe { libc::statfs(path.as_ptr(), &mut st) }).ok()?;
    // The field's C type differs between targets (i64 on x86_64, i32 on armv7).
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_type as i64 & 0xFFFF_FFFF)
}

/// Reserves the bytes `from..to` of `file` on disk (`fallocate`), so writes there cannot
/// fail for want of space. Whether it worked; a filesystem without it says no.
pub fn fallocate(file: &File, from: u64, to: u64) -> bool {
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(from),
        libc::off64_t::try_from(to.saturating_sub(from)),
    ) else {
        return false;
    };
    // SAFETY: fallocate takes integers only, on a descriptor `file` keeps open for the call.
    unsafe { libc::fallocate64(file.as_raw_fd(), 0, offset, len) == 0 }
}

/// Drops `file`'s clean pages from the page cache (`posix_fadvise(DONTNEED)`), so that the
/// next read comes from the disk: after a failed writeback, pages that never reached it
/// can stay in the cache, marked clean. Best effort: advice the kernel may not take.
pub fn drop_cache(file: &File) {
    // SAFETY: posix_fadvise takes integers only, on a descriptor `file` keeps open for the
    // call; offset 0 and length 0 mean the whole file.
    unsafe {
        libc::posix_fadvise64(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// A file lease (`fcntl(F_SETLEASE)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Granted only while no other process has the file open.
    Write,
    /// Gives a lease back.
    None,
}

/// Takes or gives back a lease on `file`. Taking a write lease fails with `EAGAIN` (or
/// `EBUSY`) while another process has the file open, and with other errors where leases
/// are not allowed (not the file's owner, a filesystem without them).
pub fn set_lease(file: &File, lease: Lease) -> io::Result<()> {
    let arg = match lease {
        Lease::Write => libc::F_WRLCK,
        Lease::None => libc::F_UNLCK,
    };
    // SAFETY: F_SETLEASE takes an int argument, and no pointer; the descriptor is open for
    // the call.
    check(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, arg) }).map(drop)
}

/// Sends `signal` to the process `id` (`kill`).
pub fn kill(id: u32, signal: libc::c_int) -> io::Result<()> {
    let id = pid(id)?;
    // SAFETY: kill takes integers only; `pid` made sure it names one process.
    check(unsafe { libc::kill(id, signal) }).map(drop)
}

/// Sends `signal` to every process of the group `id` (`killpg`).
pub fn kill_group(id: u32, signal: libc::c_int) -> io::Result<()> {
    let id = pid(id)?;
    // SAFETY: killpg takes integers only; `pid` made sure it names one group.
    check(unsafe { libc::killpg(id, signal) }).map(drop)
}

/// Whether the child `id` has exited, without reaping it (`waitid` with `WNOWAIT`): while
/// it is a zombie its id cannot be given to another process. An error (no such child)
/// counts as exited.
pub fn child_exited(id: u32) -> bool {
    // SAFETY: siginfo_t is a plain C struct, for which all zeroes is a value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: integers, and `info`, a valid and writable siginfo_t for the call to fill.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            id as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: reads a field of the siginfo_t above, which waitid filled (with WNOHANG and no
    // child to report, si_pid stays 0, as zeroed).
    r != 0 || unsafe { info.si_pid() } != 0
}

/// A descriptor that becomes readable once process `id` (a child not yet reaped, so its id
/// cannot have been reused) has exited: `pidfd_open`, Linux 5.3, close-on-exec. `None`
/// where the kernel has none.
pub fn pidfd(id: u32) -> Option<OwnedFd> {
    // SAFETY: a system call with integer arguments only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, id as libc::pid_t, 0) };
    let fd = libc::c_int::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: pidfd_open returned a new descriptor, which nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pipe, both ends close-on-exec (`pipe2`): (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of the two ints pipe2 fills.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open, and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits until one of `fds` can be read (or is at its end, or failed), or `timeout` passes
/// (`None`: for ever); says which (`poll`). A signal arriving ends the wait with none.
pub fn wait_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // Rounded up: a wait of less than a millisecond is one, not a poll that returns at once
    // (and a loop around it that spins until its time is up).
    let ms = timeout.map_or(-1, |t| {
        t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
    });
    // SAFETY: `pfds` is a valid, writable array of exactly N pollfds for the call, and the
    // borrowed descriptors stay open until it returns.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted => Ok([false; N]),
            _ => Err(e),
        };
    }
    Ok(pfds.map(|p| p.revents != 0))
}

/// Whether the other end of a connected socket has closed it whole (`POLLHUP`; a peer
/// that only shut down its writing side, as a control client does once its request is
/// sent, has not), or it failed: nothing written to it will be read.
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid, writable pollfd for the call, on a descriptor borrowed for it;
    // a timeout of 0 returns at once.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// A new inotify instance, non-blocking and close-on-exec (`inotify_init1`). Its events
/// are read from it as from a file.
pub fn inotify_init() -> io::Result<File> {
    // SAFETY: integer flags only.
    let fd = check(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
    // SAFETY: inotify_init1 succeeded, so `fd` is open, and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Watches `path` for the events in `mask` (`IN_MODIFY | …`) on an [`inotify_init`]
/// instance (`inotify_add_watch`).
pub fn inotify_add_watch(inotify: &File, path: &Path, mask: u32) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: an open descriptor, a NUL-terminated path the kernel only reads, a mask.
    check(unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), path.as_ptr(), mask) }).map(drop)
}

/// Fills `buf` with random bytes from the kernel (`getrandom`), waiting until its pool is
/// ready (at boot); retries a read a signal cut short.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, writable for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
        } else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Whether the kernel says the system clock is synchronized (NTP, chrony, timesyncd):
/// `adjtimex`, reading only.
pub fn clock_synchronized() -> bool {
    // SAFETY: timex is a plain C struct, for which all zeroes is a value; with `modes` 0
    // adjtimex only writes the clock's state into it, and changes nothing.
    let state = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        libc::adjtimex(&mut t)
    };
    state >= 0 && state != libc::TIME_ERROR
}

/// This machine's host name (`gethostname`).
pub fn hostname() -> io::Result<OsString> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, writable for the call.
    check(unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) })?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(OsString::from_vec(buf[..end].to_vec()))
}

/// Takes an exclusive lock on `file` (`flock`), without waiting: false if another process
/// holds it. Held until the file is closed (the process ends); the descriptor is
/// close-on-exec, so no command the node runs inherits it.
pub fn lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock takes a descriptor `file` keeps open for the call, and integers.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// The user id of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub fn peer_uid(stream: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that large, for a
    // descriptor `stream` keeps open for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    check(rc)?;
    Ok(cred.uid)
}

/// The calling thread's id (`gettid`): unique among the threads alive at once.
pub fn thread_id() -> i32 {
    // SAFETY: gettid takes nothing and cannot fail.
    unsafe { libc::gettid() }
}

/// Names the calling thread as `top -H`, `ps -L` and `/proc/<pid>/task/*/comm` show it:
/// its first 15 bytes (the kernel's limit), cut at a character's boundary.
pub fn name_this_thread(name: &str) {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let Ok(name) = CString::new(&name[..end]) else {
        return;
    };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which
    // `name` is and outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes this thread's files as `uid`'s (its fsuid), its euid unchanged: what a disk whose
/// files all have one owner does (FAT mounted with `uid=`). Root only.
#[cfg(test)]
pub fn set_fsuid(uid: u32) {
    // SAFETY: setfsuid takes a uid and changes the calling thread's alone.
    unsafe { libc::setfsuid(uid) };
}

/// Sets SIGIO to be ignored. The inbox takes a write lease ([`set_lease`]) on a taken
/// inmsg.txt to learn whether a writer still holds it; if another process opens the file
/// while the lease is held, the kernel sends the lease holder SIGIO, whose default action
/// ends the process: any `cat` of the file at the wrong moment, or a stray `kill -IO`,
/// would stop the agent. The lease is taken and given back at once and nothing waits for
/// the signal, so it is ignored.
pub fn ignore_sigio() {
    // SAFETY: sets a disposition, SIG_IGN: no handler runs, so nothing about
    // async-signal-safety applies, and nothing in steward relies on SIGIO.
    unsafe {
        libc::signal(libc::SIGIO, libc::SIG_IGN);
    }
}

/// A malloc tuning (`mallopt`): glibc only, elsewhere nothing.
#[derive(Debug, Clone, Copy)]
pub enum Malloc {
    /// At most this many arenas (`M_ARENA_MAX`).
    ArenaMax(i32),
    /// Blocks of this many bytes or more are mapped on their own (`M_MMAP_THRESHOLD`).
    MmapThreshold(i32),
}

/// Sets a malloc parameter; whether it was taken.
pub fn mallopt(setting: Malloc) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let (param, value) = match setting {
            Malloc::ArenaMax(n) => (libc::M_ARENA_MAX, n),
            Malloc::MmapThreshold(n) => (libc::M_MMAP_THRESHOLD, n),
        };
        // SAFETY: integers only; mallopt sets allocator parameters under the allocator's
        // own lock.
        unsafe { libc::mallopt(param, value) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = setting;
        false
    }
}

/// Hands the memory malloc keeps free back to the system (`malloc_trim`): glibc only,
/// elsewhere nothing.
pub fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: an integer argument; malloc_trim only returns free memory, under the
    // allocator's own lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_pipe_is_readable_once_written_and_at_its_end_once_closed() {
        let (r, w) = pipe().unwrap();
        let d = Some(Duration::ZERO);
        assert_eq!(wait_readable([r.as_fd()], d).unwrap(), [false]);
        let mut w = File::from(w);
        w.write_all(b"x").unwrap();
        assert_eq!(wait_readable([r.as_fd()], d).unwrap(), [true]);
        let mut r = File::from(r);
        let mut buf = [0u8; 4];
        assert_eq!(r.read(&mut buf).unwrap(), 1);
        let (r2, _w2) = pipe().unwrap();
        drop(w);
        assert_eq!(
            wait_readable([r2.as_fd(), r.as_fd()], None).unwrap(),
            [false, true]
        );
    }

    #[test]
    fn pids_that_would_signal_more_than_one_process_are_refused() {
        assert!(kill(0, 0).is_err());
        assert!(kill(u32::MAX, 0).is_err());
        assert!(kill_group(0, 0).is_err());
        assert!(kill(std::process::id(), 0).is_ok());
    }

    #[test]
    fn the_calls_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = free_bytes(dir.path()).unwrap();
        assert!(total > 0 && free <= total);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
        let mut a = [0u8; 32];
        getrandom(&mut a).unwrap();
        assert_ne!(a, [0u8; 32]);
        assert!(!hostname().unwrap().is_empty());
        let f = File::create(dir.path().join("f")).unwrap();
        if fallocate(&f, 0, 4096) {
            assert!(f.metadata().unwrap().len() >= 4096);
        }
    }
}
