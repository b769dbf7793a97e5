//! When a schedule fires: a 5-field cron expression (or `@hourly`, `@daily`, ...) read as
//! wall-clock times in an IANA time zone.
//!
//! Windows are wall-clock times. Across a daylight-saving change: a wall time that occurs
//! twice (the clock goes back) fires once, at its first occurrence; a wall time that does
//! not occur (the clock goes forward) fires at the next valid instant, the moment the
//! clock jumps (02:30 on a spring-forward night in Berlin fires at 03:00 CEST).

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// The nicknames accepted besides five fields.
const NICKNAMES: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// A bad `cron` or `timezone`, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CalendarError {
    pub field: &'static str,
    pub message: String,
}

/// A parsed schedule: its cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct Calendar {
    cron: Cron,
    zone: Tz,
}

impl Calendar {
    pub fn parse(cron: &str, timezone: &str) -> Result<Self, CalendarError> {
        let cron = cron.trim();
        let bad_cron = |message: String| CalendarError {
            field: "cron",
            message,
        };
        if cron.starts_with('@') {
            if !NICKNAMES.contains(&cron.to_ascii_lowercase().as_str()) {
                return Err(bad_cron(format!(
                    "`{cron}` is not a known nickname (one of {})",
                    NICKNAMES.join(", ")
                )));
            }
        } else {
            let fields = cron.split_whitespace().count();
            if fields != 5 {
                return Err(bad_cron(format!(
                    "`{cron}` has {fields} fields; a schedule has 5 (minute hour day-of-month \
                     month day-of-week), e.g. `0 2 * * *` for 02:00 every day"
                )));
            }
        }
        // croner knows every nickname but `@midnight`, which is `@daily`.
        let spelled = if cron.eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            cron
        };
        let parsed = Cron::from_str(spelled).map_err(|e| bad_cron(format!("`{cron}`: {e}")))?;
        let zone = Tz::from_str(timezone.trim()).map_err(|_| CalendarError {
            field: "timezone",
            message: format!(
                "`{timezone}` is not an IANA time zone (e.g. `UTC`, `Europe/Berlin`, \
                 `America/New_York`)"
            ),
        })?;
        Ok(Self { cron: parsed, zone })
    }

    /// The first window strictly after `after`, as an instant; `None` when the
    /// expression never matches again (e.g. 30 February).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Windows fall on whole seconds (croner would carry a fraction over).
        let mut wall = after
            .with_timezone(&self.zone)
            .naive_local()
            .with_nanosecond(0)
            .expect("zero nanoseconds is valid");
        // Enough for any expression that matches at all (croner searches years ahead itself).
        for _ in 0..1_000 {
            wall = self.next_wall(wall)?;
            let instant = self.instant(wall)?;
            if instant > after {
                return Some(instant);
            }
        }
        None
    }

    /// The expression in English words (croner's description), e.g. "At 02:00".
    pub fn describe(&self) -> String {
        self.cron.describe()
    }

    /// The next `n` windows after `after`.
    pub fn next_times(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut times = Vec::with_capacity(n);
        let mut at = after;
        while times.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    times.push(next);
                    at = next;
                }
                None => break,
            }
        }
        times
    }

    /// An instant as the schedule's wall clock shows it, with the zone's abbreviation.
    pub fn local(&self, at: DateTime<Utc>) -> String {
        at.with_timezone(&self.zone)
            .format("%a %Y-%m-%d %H:%M %Z")
            .to_string()
    }

    /// The next matching wall-clock time strictly after `wall` (croner on UTC, which has no
    /// clock changes, stands for the naive wall clock).
    fn next_wall(&self, wall: NaiveDateTime) -> Option<NaiveDateTime> {
        let as_utc = Utc.from_utc_datetime(&wall);
        self.cron
            .find_next_occurrence(&as_utc, false)
            .ok()
            .map(|next| next.naive_utc())
    }

    /// The instant a window at wall time `wall` fires: its first occurrence, or, for a wall
    /// time the clock skips, the first valid instant after it.
    fn instant(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.zone.from_local_datetime(&wall) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => {
                // In a gap (at most a few hours; clocks change on whole minutes): the first
                // minute after it that exists is when the clock jumped.
                let mut probe = wall;
                for _ in 0..(4 * 60) {
                    probe += Duration::minutes(1);
                    match self.zone.from_local_datetime(&probe) {
                        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                            return Some(t.with_timezone(&Utc))
                        }
                        LocalResult::None => continue,
                    }
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn windows(cal: &Calendar, from: &str, n: usize) -> Vec<String> {
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = cal.next_after(t).unwrap();
                t.to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn five_fields_and_nicknames_in_utc() {
        let cal = Calendar::parse("*/15 * * * *", "UTC").unwrap();
        assert_eq!(
            windows(&cal, "2026-01-01T00:07:00Z", 3),
            [
                "2026-01-01T00:15:00+00:00",
                "2026-01-01T00:30:00+00:00",
                "2026-01-01T00:45:00+00:00"
            ]
        );
        let daily = Calendar::parse("@daily", "UTC").unwrap();
        assert_eq!(
            windows(&daily, "2026-01-01T00:00:00Z", 1),
            ["2026-01-02T00:00:00+00:00"]
        );
        // The README's `@midnight` is `@daily` (croner does not know it by that name).
        for midnight in ["@midnight", "@MIDNIGHT"] {
            let cal = Calendar::parse(midnight, "UTC").unwrap();
            assert_eq!(
                windows(&cal, "2026-01-01T00:00:00Z", 1),
                ["2026-01-02T00:00:00+00:00"]
            );
        }
        // From a clock with a fraction of a second: windows still on whole minutes.
        assert_eq!(
            windows(&cal, "2026-01-01T00:15:00.200Z", 1),
            ["2026-01-01T00:30:00+00:00"]
        );
        // Strictly after: a window at `after` itself is not the next one.
        let hourly = Calendar::parse("@hourly", "UTC").unwrap();
        assert_eq!(
            windows(&hourly, "2026-01-01T05:00:00Z", 1),
            ["2026-01-01T06:00:00+00:00"]
        );
    }

    #[test]
    fn a_time_zone_moves_the_windows() {
        let cal = Calendar::parse("0 2 * * *", "Europe/Berlin").unwrap();
        // Winter: 02:00 CET is 01:00 UTC.
        assert_eq!(
            windows(&cal, "2026-01-10T12:00:00Z", 1),
            ["2026-01-11T01:00:00+00:00"]
        );
    }

    /// 2026-03-29 in Berlin: 02:00 CET becomes 03:00 CEST; 02:30 does not exist and fires
    /// when the clock jumps. 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 occurs twice
    /// and fires once, the first time.
    #[test]
    fn daylight_saving_changes_neither_skip_nor_repeat_a_window() {
        let cal = Calendar::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            windows(&cal, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T01:30:00+00:00", // 02:30 CET
                "2026-03-29T01:00:00+00:00", // the jump: 03:00 CEST
                "2026-03-30T00:30:00+00:00", // 02:30 CEST
            ]
        );
        assert_eq!(
            windows(&cal, "2026-10-24T12:00:00Z", 2),
            [
                "2026-10-25T00:30:00+00:00", // 02:30 CEST, the first pass
                "2026-10-26T01:30:00+00:00", // 02:30 CET, next day
            ]
        );
        // Asked from inside the second pass (02:10 CET): 02:30 of that night has fired
        // already in the first pass; the next window is the next night's.
        assert_eq!(
            windows(&cal, "2026-10-25T01:10:00Z", 1),
            ["2026-10-26T01:30:00+00:00"]
        );
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        for (cron, zone, field, says) in [
            ("0 2 * *", "UTC", "cron", "has 4 fields"),
            ("0 0 2 * * *", "UTC", "cron", "has 6 fields"),
            ("61 * * * *", "UTC", "cron", "`61 * * * *`"),
            ("@fortnightly", "UTC", "cron", "not a known nickname"),
            (
                "0 2 * * *",
                "Mars/Olympus",
                "timezone",
                "not an IANA time zone",
            ),
        ] {
            let e = Calendar::parse(cron, zone).unwrap_err();
            assert_eq!(e.field, field, "{cron} {zone}");
            assert!(e.message.contains(says), "{cron} {zone}: {}", e.message);
        }
    }
}
