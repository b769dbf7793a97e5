//! The cron expression against the calendar itself: whatever it matches is accepted and
//! fires; what the calendar accepts in the spellings it states, it matches.

use chrono::Utc;
use regex::Regex;

use super::*;
use crate::schedules::calendar::Calendar;

fn fires(cron: &str) -> bool {
    Calendar::parse(cron, "UTC").is_ok_and(|c| c.next_after(Utc::now()).is_some())
}

fn whole(regex: &str) -> Regex {
    Regex::new(&format!("^(?:{regex})$")).unwrap()
}

#[test]
fn int_ranges_match_exactly_their_numbers() {
    for (lo, hi) in [
        (0, 7),
        (1, 31),
        (0, 59),
        (13, 47),
        (5, 9999),
        (1, 9999),
        (30, 31),
        (100, 105),
    ] {
        let re = whole(&int_range(lo, hi));
        for n in 0..=10_050 {
            assert_eq!(
                re.is_match(&n.to_string()),
                (lo..=hi).contains(&n),
                "{n} in {lo}..={hi}"
            );
        }
        assert!(!re.is_match("05"), "no leading zeros");
    }
}

/// One field's items, each in a cron whose other fields are `*`: (item, canonical), where
/// a canonical item is spelt the way the expression states.
fn items(field: &Field) -> Vec<(String, bool)> {
    let (lo, hi) = (field.lo, field.hi);
    let mut out = Vec::new();
    for n in 0..=65 {
        out.push((n.to_string(), true));
        for m in [0, 1, 5, 12, 23, 31, 59, 60] {
            out.push((format!("{n}-{m}"), true));
        }
    }
    for s in [0, 1, 2, 7, 13, 59, 60, 9999, 10_000] {
        out.push((format!("*/{s}"), s <= 9999));
        for a in [lo, lo + 1, hi, hi + 1] {
            out.push((format!("{a}/{s}"), s <= 9999));
            out.push((format!("{a}-{hi}/{s}"), s <= 9999));
            out.push((format!("{lo}-{a}/{s}"), s <= 9999));
        }
    }
    for (name, _) in field.names.iter().chain(field.end_names) {
        out.push((name.to_string(), true));
        out.push((name.to_lowercase(), false));
        out.push((format!("{name}/2"), true));
        for (end, _) in field.end_names {
            out.push((format!("{name}-{end}"), true));
        }
    }
    for other in ["JAN", "MON", "SUN", "DEC"] {
        // A name of the other field: croner reads it as its number anywhere.
        if !field.names.iter().any(|(n, _)| *n == other) {
            out.push((other.to_owned(), false));
        }
    }
    for x in [
        "L",
        "LW",
        "0W",
        "1W",
        "15W",
        "31W",
        "32W",
        "5L",
        "7L",
        "8L",
        "FRIL",
        "5#0",
        "5#1",
        "5#5",
        "5#6",
        "7#2",
        "MON#3",
        "?",
        "*",
        "1,2",
        "1,,2",
        "*,1",
        "1-5,*/7,9",
        "05",
        "5-1",
        " 5",
    ] {
        out.push((x.to_owned(), !["?", "05", "1,,2", " 5"].contains(&x)));
    }
    out
}

fn cron_with(position: usize, item: &str) -> String {
    let mut fields = ["0", "0", "*", "*", "*"];
    fields[position] = item;
    fields.join(" ")
}

#[test]
fn every_field_matches_what_the_calendar_accepts() {
    let fields = [MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK];
    for (position, field) in fields.iter().enumerate() {
        let re = whole(&field.regex());
        for (item, canonical) in items(field) {
            let cron = cron_with(position, &item);
            let accepted = fires(&cron);
            if re.is_match(&item) {
                assert!(
                    accepted,
                    "the expression matches `{cron}`, which the API refuses"
                );
            } else if accepted && canonical {
                panic!("the API accepts `{cron}`, which the expression does not match");
            }
        }
    }
}

#[test]
fn calendars_that_never_fire_are_exactly_those_left_out() {
    let days_30_31 = whole(&DAY_OF_MONTH.list_within(&[30, 31]));
    let days_31 = whole(&DAY_OF_MONTH.list_within(&[31]));
    let february = whole(&MONTH.list_within(&[2]));
    let short = whole(&MONTH.list_within(&SHORT_MONTHS));
    let mut days: Vec<String> = ["L", "29", "30", "31", "31W", "30,31", "*/30", "28-31/3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    days.push("1".into());
    // Values around the short months, their ranges and steps (each calendar that never
    // fires costs croner a long search: the list is kept short).
    let values = [1u32, 2, 4, 11, 12];
    let mut months: Vec<String> = Vec::new();
    for a in values {
        months.push(a.to_string());
        for b in values.into_iter().filter(|b| *b >= a) {
            months.push(format!("{a}-{b}"));
        }
        for s in [1, 7, 9] {
            months.push(format!("{a}/{s}"));
        }
    }
    months.extend(["2-4/2", "4-9/5", "1-12/2"].map(String::from));
    months.extend(
        [
            "FEB", "FEB-FEB", "FEB/11", "4,6,9,11", "2,3", "FEB,NOV", "*/2",
        ]
        .map(String::from),
    );
    let mut never = 0;
    for day in &days {
        for month in &months {
            let cron = format!("0 0 {day} {month} *");
            if Calendar::parse(&cron, "UTC").is_err() {
                continue;
            }
            let left_out = (days_30_31.is_match(day) && february.is_match(month))
                || (days_31.is_match(day) && short.is_match(month));
            assert_eq!(left_out, !fires(&cron), "`{cron}`");
            never += usize::from(left_out);
        }
    }
    assert!(never > 20, "{never} calendars that never fire were tried");
    // With a day of the week as well, either day fires it.
    assert!(fires("0 0 30 2 MON"));
}

#[test]
fn nicknames_are_accepted() {
    for nickname in [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ] {
        assert!(fires(nickname), "{nickname}");
    }
}
