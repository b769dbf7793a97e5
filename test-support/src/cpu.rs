//! CPU time of processes, as the benchmark binaries (`bench-post`, `bench-broker`,
//! `bench-pool`) read it.

/// User and system CPU ticks (USER_HZ: 100 a second on Linux) in the text of a
/// `/proc/<pid>/stat`; `None` when it cannot be read as one.
pub fn ticks_in_stat(stat: &str) -> Option<u64> {
    // The fields after the command's closing parenthesis start at field 3; utime and
    // stime are fields 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Seconds per tick of [`ticks_in_stat`].
pub const SECONDS_PER_TICK: f64 = 0.01;

/// User and system CPU seconds of the process `pid` (`self`: this one) so far; `None`
/// when its `/proc/<pid>/stat` cannot be read (it has ended).
pub fn cpu_seconds(pid: impl std::fmt::Display) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ticks_in_stat(&stat)? as f64 * SECONDS_PER_TICK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_the_command_whatever_it_holds() {
        // A command with a space and a parenthesis in it; utime 250, stime 31.
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0";
        assert_eq!(ticks_in_stat(stat), Some(281));
        assert_eq!(ticks_in_stat("garbage"), None);
    }

    #[test]
    fn this_process_can_be_read_and_a_process_that_does_not_exist_cannot() {
        assert!(cpu_seconds("self").is_some_and(|s| s >= 0.0));
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
