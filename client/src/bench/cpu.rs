//! CPU accounting from `/proc/<pid>/stat`: user + system time of a set of
//! processes (every thread included), read before and after a cell.
//!
//! A PostgreSQL server is counted as its postmaster, its children alive at
//! the reading (backends, WAL writer, checkpointer...) and the children it
//! has already reaped (`cutime + cstime` of the postmaster).

use std::path::Path;

/// The fields of `/proc/<pid>/stat` the bench reads, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    /// Reaped children's user and system time.
    pub cutime: u64,
    pub cstime: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so fields are
/// counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let after_name = &line[line.rfind(')')? + 1..];
    // Fields 3.. of proc(5): state, ppid, pgrp, session, tty_nr, tpgid,
    // flags, minflt, cminflt, majflt, cmajflt, utime(14), stime, cutime, cstime.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        ppid: u32::try_from(number(4)?).ok()?,
        utime: number(14)?,
        stime: number(15)?,
        cutime: number(16)?,
        cstime: number(17)?,
    })
}

/// The stat of process `pid`, or None when it is gone (or not Linux).
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// What a CPU reading covers.
#[derive(Clone, Debug, Default)]
pub struct CpuScope {
    /// Processes counted by their own time (threads included).
    pub pids: Vec<u32>,
    /// PostgreSQL postmasters, counted with their whole process tree.
    pub process_trees: Vec<u32>,
}

impl CpuScope {
    /// CPU seconds used so far by everything in scope, plus this process.
    pub fn seconds(&self) -> f64 {
        let own = read_stat(std::process::id()).map_or(0, |s| s.utime + s.stime);
        let pids: u64 = self
            .pids
            .iter()
            .filter_map(|pid| read_stat(*pid))
            .map(|s| s.utime + s.stime)
            .sum();
        let trees: u64 = if self.process_trees.is_empty() {
            0
        } else {
            let all = all_stats(Path::new("/proc"));
            self.process_trees
                .iter()
                .map(|root| tree_ticks(*root, &all))
                .sum()
        };
        (own + pids + trees) as f64 / ticks_per_second() as f64
    }
}

/// Every readable process: (pid, stat).
fn all_stats(proc_dir: &Path) -> Vec<(u32, ProcStat)> {
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect()
}

/// Ticks of `root`, its reaped children, and its live children.
pub fn tree_ticks(root: u32, all: &[(u32, ProcStat)]) -> u64 {
    let own = all
        .iter()
        .find(|(pid, _)| *pid == root)
        .map_or(0, |(_, s)| s.utime + s.stime + s.cutime + s.cstime);
    let children: u64 = all
        .iter()
        .filter(|(_, s)| s.ppid == root)
        .map(|(_, s)| s.utime + s.stime)
        .sum();
    own + children
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "4242 (post gres) wal) S 17 4242 4242 0 -1 4194560 1203 0 0 0 \
                        250 75 9 3 20 0 1 0 123456 1000000 500 18446744073709551615";

    #[test]
    fn fields_are_counted_from_the_last_parenthesis() {
        assert_eq!(
            parse_stat(LINE),
            Some(ProcStat {
                ppid: 17,
                utime: 250,
                stime: 75,
                cutime: 9,
                cstime: 3,
            })
        );
        assert_eq!(parse_stat("12 (short) S 1 2"), None, "too few fields");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_tree_counts_its_root_its_reaped_and_its_live_children() {
        let stat = |ppid, utime, stime, cutime| ProcStat {
            ppid,
            utime,
            stime,
            cutime,
            cstime: 0,
        };
        let all = [
            (10, stat(1, 5, 5, 7)),
            (11, stat(10, 3, 1, 0)),
            (12, stat(10, 2, 0, 0)),
            (13, stat(1, 100, 100, 0)),
        ];
        assert_eq!(tree_ticks(10, &all), 5 + 5 + 7 + 4 + 2);
        assert_eq!(tree_ticks(99, &all), 0, "a gone root counts nothing");
    }

    #[test]
    fn this_process_is_readable() {
        let stat = read_stat(std::process::id()).expect("/proc/self/stat on Linux");
        assert!(stat.ppid > 0);
        assert!(ticks_per_second() >= 100);
        assert!(CpuScope::default().seconds() >= 0.0);
    }
}
