//! CPU time and resident memory of a process, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status`, and how busy a CPU core is, from `/proc/stat` (Linux).
//!
//! Both are needed: a process's own CPU time leaves out the softirq work the kernel
//! does on its core for it (over loopback, most of the TCP receive path of what the
//! server sends runs there), so a server can saturate its core at well under 100% of
//! process CPU.

use std::io;
use std::time::Instant;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size (`VmRSS`), in KiB.
    pub rss_kib: u64,
    /// When it was read.
    pub at: Instant,
}

/// Reads process `pid` now.
pub fn sample(pid: u32) -> io::Result<Sample> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/{what}: unexpected format"),
        )
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(Sample {
        cpu_ticks: cpu_ticks(&stat).ok_or_else(|| bad("stat"))?,
        rss_kib: rss_kib(&status).ok_or_else(|| bad("status"))?,
        at: Instant::now(),
    })
}

/// CPU use between two samples, in percent of one core.
pub fn cpu_percent(from: &Sample, to: &Sample) -> f64 {
    let secs = to.at.duration_since(from.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let ticks = to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64;
    ticks / rustix::param::clock_ticks_per_second() as f64 / secs * 100.0
}

/// Cumulative time of one core, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct CoreSample {
    /// Ticks spent doing anything but idling (user, nice, system, irq, softirq,
    /// steal).
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

/// Reads core `core` from `/proc/stat`.
pub fn core_sample(core: usize) -> io::Result<CoreSample> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_core(&stat, core).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("/proc/stat has no line for cpu{core}"),
        )
    })
}

/// How busy a core was between two samples, in percent.
pub fn core_busy_percent(from: &CoreSample, to: &CoreSample) -> f64 {
    let total = to.total.saturating_sub(from.total);
    if total == 0 {
        return 0.0;
    }
    to.busy.saturating_sub(from.busy) as f64 * 100.0 / total as f64
}

/// The `cpuN` line of `/proc/stat`: user nice system idle iowait irq softirq steal …
fn parse_core(stat: &str, core: usize) -> Option<CoreSample> {
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    if ticks.len() < 5 {
        return None;
    }
    let total: u64 = ticks.iter().sum();
    // idle and iowait are the only idle states.
    Some(CoreSample {
        busy: total - ticks[3] - ticks[4],
        total,
    })
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Fields 3.. follow the name; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status`.
fn rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_fields_are_read() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 1 0 100 1000000 200 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(
            rss_kib("Name:\tx\nVmRSS:\t  20480 kB\nVmSwap: 0 kB\n"),
            Some(20480)
        );
        assert_eq!(rss_kib("Name: x\n"), None);
    }

    #[test]
    fn core_lines_are_read() {
        let stat =
            "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 5 1 4 50 10 2 3 0 0 0\ncpu1 5 0 6 50 0 0 0 0\n";
        let c0 = parse_core(stat, 0).expect("cpu0");
        assert_eq!((c0.busy, c0.total), (15, 75));
        assert!(parse_core(stat, 2).is_none());
        let later = CoreSample {
            busy: c0.busy + 30,
            total: c0.total + 40,
        };
        assert_eq!(core_busy_percent(&c0, &later), 75.0);
        assert!(core_sample(0).is_ok());
    }

    #[test]
    fn this_process_can_be_sampled() {
        let a = sample(std::process::id()).expect("sample self");
        assert!(a.rss_kib > 0);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = sample(std::process::id()).expect("sample self");
        assert!(b.cpu_ticks >= a.cpu_ticks);
        assert!(cpu_percent(&a, &b) >= 0.0);
        assert!(sample(u32::MAX).is_err());
    }
}
