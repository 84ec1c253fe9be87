//! What the kernel says about nginx's processes: whether a pid file names a live nginx
//! master, and which workers it has, read from `/proc`.
//!
//! Only reads; never signals anything. A pid is paired with its start time so a pid
//! the kernel reused for an unrelated process is never mistaken for an old worker.

use std::path::Path;

/// A process, identified robustly against pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcId {
    pub(crate) pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub(crate) start: u64,
}

/// The parent pid and start time from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); ppid is field 4, starttime field 22.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    // A zombie has exited; it only waits for its parent to reap it.
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some((ppid, start))
}

/// The process as it is now, if it is alive.
pub(crate) fn identify(pid: i32) -> Option<ProcId> {
    stat(pid).map(|(_, start)| ProcId { pid, start })
}

/// Whether `proc` is still the same live process.
pub(crate) fn alive(proc: ProcId) -> bool {
    stat(proc.pid).is_some_and(|(_, start)| start == proc.start)
}

/// The live children of `parent` (for an nginx master: its workers, plus cache
/// processes when configured).
pub(crate) fn children(parent: i32) -> Vec<ProcId> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<ProcId> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| match stat(pid) {
            Some((ppid, start)) if ppid == parent => Some(ProcId { pid, start }),
            _ => None,
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// The command line nginx shows for a process (`nginx: master process ...`).
fn cmdline(pid: i32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&bytes)
            .replace('\0', " ")
            .trim()
            .to_owned(),
    )
}

/// Whether an nginx worker has stopped accepting connections: it has exited, or it
/// runs its graceful shutdown (nginx retitles the worker right before it closes its
/// listening sockets).
pub(crate) fn stopped_accepting(worker: ProcId) -> bool {
    !alive(worker) || cmdline(worker.pid).is_none_or(|line| line.contains("shutting down"))
}

/// The nginx master named by `pid_file`, when the file names a live process that is an
/// nginx master and, when `marker` is given, whose command line contains it (so a
/// managed nginx is told apart from any other nginx on the host).
pub(crate) fn master_from_pid_file(pid_file: &Path, marker: Option<&str>) -> Option<ProcId> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    let line = cmdline(pid)?;
    if !line.starts_with("nginx: master process") {
        return None;
    }
    if marker.is_some_and(|m| !line.contains(m)) {
        return None;
    }
    identify(pid)
}

/// The inodes of the sockets `proc` has open (`/proc/<pid>/fd/*` -> `socket:[N]`).
fn socket_inodes(proc: ProcId) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", proc.pid)) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let link = std::fs::read_link(entry.ok()?.path()).ok()?;
        let link = link.to_str()?;
        link.strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// One line of `/proc/<pid>/net/tcp{,6}`: the local port, the state and the inode.
fn tcp_entry(line: &str) -> Option<(u16, u8, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = fields.get(1)?;
    let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some((port, state, inode))
}

/// The TCP sockets of `proc`'s network namespace, as (local port, state, inode).
fn tcp_table(proc: ProcId) -> Vec<(u16, u8, u64)> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{}/net/{t}", proc.pid)).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(tcp_entry)
                .collect::<Vec<_>>()
        })
        .collect()
}

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_LISTEN: u8 = 0x0A;

/// How many connections `workers` hold open to backends: established sockets whose
/// local port is not one `master` listens on (those are clients' connections). Old
/// workers still alive when a drain ends hold exactly the long-lived ones
/// (WebSockets, event streams, long downloads): nginx closes idle pooled ones at
/// once. Zero when `/proc` cannot be read (another user's nginx).
pub(crate) fn backend_connections(master: ProcId, workers: &[ProcId]) -> usize {
    let table = tcp_table(master);
    let master_sockets = socket_inodes(master);
    let listening: Vec<u16> = table
        .iter()
        .filter(|(_, state, inode)| *state == TCP_LISTEN && master_sockets.contains(inode))
        .map(|(port, _, _)| *port)
        .collect();
    workers
        .iter()
        .filter(|w| alive(**w))
        .map(|w| {
            let mine = socket_inodes(*w);
            table
                .iter()
                .filter(|(port, state, inode)| {
                    *state == TCP_ESTABLISHED && !listening.contains(port) && mine.contains(inode)
                })
                .count()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_itself_and_its_children() {
        let me = identify(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(alive(me));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let child_pid = i32::try_from(child.id()).unwrap();
        let kids = children(me.pid);
        assert!(kids.iter().any(|k| k.pid == child_pid), "{kids:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        let gone = kids.iter().find(|k| k.pid == child_pid).unwrap();
        assert!(!alive(*gone));
    }

    #[test]
    fn reused_pid_is_not_the_same_process() {
        let me = identify(i32::try_from(std::process::id()).unwrap()).unwrap();
        let other = ProcId {
            start: me.start + 1,
            ..me
        };
        assert!(!alive(other));
    }

    #[test]
    fn counts_outgoing_connections_but_not_accepted_ones() {
        use std::net::{TcpListener, TcpStream};
        let me = identify(i32::try_from(std::process::id()).unwrap()).unwrap();
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let before = backend_connections(me, &[me]);
        // Outgoing, to a listener that is ours too: the client end counts, the
        // accepted end sits on a port we listen on and does not.
        let _client = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let _accepted = server.accept().unwrap();
        assert_eq!(backend_connections(me, &[me]), before + 1);
        assert_eq!(
            tcp_entry(
                "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1"
            ),
            Some((8080, TCP_LISTEN, 12345))
        );
    }

    #[test]
    fn pid_file_of_a_non_nginx_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nginx.pid");
        std::fs::write(&file, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(master_from_pid_file(&file, None), None);
        std::fs::write(&file, "garbage").unwrap();
        assert_eq!(master_from_pid_file(&file, None), None);
        assert_eq!(master_from_pid_file(&dir.path().join("absent"), None), None);
    }
}
