//! Reading process identity from `/proc`: a pid plus its start time is what tells a live
//! process apart from an unrelated one that happens to have recycled the same pid.

/// Fields of `/proc/PID/stat` we care about.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcStat {
    /// One-letter state; `Z` (zombie) and `X` (dead) mean the process has already exited.
    pub state: u8,
    /// Field 4: the parent's pid.
    pub ppid: u32,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    if pid == 0 {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&raw)
}

/// Parses after the *last* `)`: the command name (field 2) may itself contain spaces and `)`.
fn parse_stat(raw: &[u8]) -> Option<ProcStat> {
    let close = raw.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&raw[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // `fields` starts at field 3 (state), then field 4 (ppid); field 22 is 18 after that.
    let state = *fields.next()?.as_bytes().first()?;
    let ppid = fields.next()?.parse().ok()?;
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(ProcStat { state, ppid, start_time })
}

/// Start time (field 22 of `/proc/PID/stat`, clock ticks since boot) of `pid`, or `None` if
/// there is no such process. Zombies still have one.
pub fn process_start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_time)
}

/// Whether `pid` is the very process that started at `start_time` and has not yet exited.
pub(crate) fn is_alive(pid: u32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some(s) if s.start_time == start_time && s.state != b'Z' && s.state != b'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_after_last_paren() {
        let line = b"4242 (we(ird) name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, b'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn own_start_time_is_stable() {
        let me = std::process::id();
        let a = process_start_time(me).unwrap();
        assert_eq!(process_start_time(me), Some(a));
        assert!(is_alive(me, a));
        assert!(!is_alive(me, a + 1));
        assert_eq!(process_start_time(0), None);
    }
}
