//! CPU time and resident memory of a process, read from Linux `/proc`.
//!
//! CPU time is `utime + stime` from `/proc/<pid>/stat`: every thread of the process, user and
//! kernel, in clock ticks. A tick is 10 ms at the usual `CLK_TCK = 100`, so a window should
//! hold at least a few hundred ticks of work for a per-request figure to mean much; the
//! report carries the raw total so the reader can check.

use std::io;
use std::process::Command;

/// Clock ticks per second for `/proc/<pid>/stat` times, from `getconf CLK_TCK`.
///
/// Falls back to 100, the value on every mainstream Linux architecture.
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

/// `utime + stime` of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected format in /proc/{pid}/stat"),
        )
    })
}

/// Resident set size of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_rss_kib(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no VmRSS in /proc/{pid}/status"),
        )
    })
}

/// Extracts `utime + stime` (fields 14 and 15) from the text of `/proc/<pid>/stat`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // Field 2, the command name, is in parentheses and may itself contain spaces or ')'.
    // Fields after the last ')' start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_name() {
        let stat = "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 5000 100000 300 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tcascadia\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t2\n";
        assert_eq!(parse_status_rss_kib(status), Some(4321));
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        cpu_ticks(me).unwrap();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(clock_ticks_per_second() > 0);
    }
}
