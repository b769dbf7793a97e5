//! The `cron` of a schedule as a regular expression (ECMA 262, for the OpenAPI document),
//! built from the same bounds croner checks: five fields (minute 0-59, hour 0-23,
//! day-of-month 1-31, month 1-12 or `JAN`-`DEC`, day-of-week 0-7 or `SUN`-`SAT`), each `*`
//! or a list of values, ranges whose start is not after their end, steps (`*/15`,
//! `5/10`, `1-5/2`), `L` and `15W` in day-of-month, `5L` (0-6) and `5#2` in day-of-week; or a
//! nickname. Expressions that never fire (`0 0 30 2 *`, `0 0 31 4 *`) are left out, as the
//! API refuses them.
//!
//! Everything the expression matches is a calendar the API accepts. The API also accepts
//! spellings it leaves out: leading zeros, lower-case names, `?`, several spaces, other
//! mixes of names and numbers, steps above 9999.

/// Integers `lo..=hi` (no leading zeros) as an alternation of digit classes.
pub(super) fn int_range(lo: u32, hi: u32) -> String {
    assert!(lo <= hi);
    let mut parts = Vec::new();
    let mut width = 1;
    loop {
        let floor = if width == 1 { 0 } else { 10u32.pow(width - 1) };
        let ceil = 10u32.pow(width) - 1;
        if floor > hi {
            break;
        }
        if ceil >= lo {
            let a = lo.max(floor);
            let b = hi.min(ceil);
            let w = width as usize;
            span(&format!("{a:0w$}"), &format!("{b:0w$}"), &mut parts);
        }
        width += 1;
    }
    group(&parts)
}

/// Alternatives for the fixed-width digit strings `lo..=hi`.
fn span(lo: &str, hi: &str, out: &mut Vec<String>) {
    let (l0, h0) = (lo.as_bytes()[0] - b'0', hi.as_bytes()[0] - b'0');
    let class = |a: u8, b: u8| match b - a {
        0 => a.to_string(),
        9 => "[0-9]".to_owned(),
        _ => format!("[{a}-{b}]"),
    };
    if lo.len() == 1 {
        out.push(class(l0, h0));
        return;
    }
    let (lo_rest, hi_rest) = (&lo[1..], &hi[1..]);
    if l0 == h0 {
        let mut inner = Vec::new();
        span(lo_rest, hi_rest, &mut inner);
        out.push(format!("{l0}{}", group(&inner)));
        return;
    }
    let any = |n: usize| {
        if n == 1 {
            "[0-9]".to_owned()
        } else {
            format!("[0-9]{{{n}}}")
        }
    };
    let rest = lo_rest.len();
    let mut first = l0;
    if lo_rest.bytes().any(|b| b != b'0') {
        let mut inner = Vec::new();
        span(lo_rest, &"9".repeat(rest), &mut inner);
        out.push(format!("{l0}{}", group(&inner)));
        first += 1;
    }
    let mut last = h0;
    let hi_full = hi_rest.bytes().all(|b| b == b'9');
    if !hi_full {
        last -= 1;
    }
    if first <= last {
        out.push(format!("{}{}", class(first, last), any(rest)));
    }
    if !hi_full {
        let mut inner = Vec::new();
        span(&"0".repeat(rest), hi_rest, &mut inner);
        out.push(format!("{h0}{}", group(&inner)));
    }
}

fn group(parts: &[String]) -> String {
    if parts.len() == 1 && !parts[0].contains('|') {
        parts[0].clone()
    } else {
        format!("(?:{})", parts.join("|"))
    }
}

/// The largest step the expression states (croner takes up to 65535).
const MAX_STEP: u32 = 9999;

/// One cron field: its bounds and names.
pub(super) struct Field {
    pub lo: u32,
    pub hi: u32,
    /// Names and their values, as the start of a range or alone.
    pub names: &'static [(&'static str, u32)],
    /// Names and their values at the end of a range (`FRI-SUN` is 5-7).
    pub end_names: &'static [(&'static str, u32)],
    /// What else one item of the list may be (`L`, `15W`, `5#2`, ...).
    pub extras: fn() -> Vec<String>,
}

const MONTHS: &[(&str, u32)] = &[
    ("JAN", 1),
    ("FEB", 2),
    ("MAR", 3),
    ("APR", 4),
    ("MAY", 5),
    ("JUN", 6),
    ("JUL", 7),
    ("AUG", 8),
    ("SEP", 9),
    ("OCT", 10),
    ("NOV", 11),
    ("DEC", 12),
];
const DAYS: &[(&str, u32)] = &[
    ("SUN", 0),
    ("MON", 1),
    ("TUE", 2),
    ("WED", 3),
    ("THU", 4),
    ("FRI", 5),
    ("SAT", 6),
];
const DAYS_AT_END: &[(&str, u32)] = &[
    ("MON", 1),
    ("TUE", 2),
    ("WED", 3),
    ("THU", 4),
    ("FRI", 5),
    ("SAT", 6),
    ("SUN", 7),
];

fn none() -> Vec<String> {
    Vec::new()
}

pub(super) const MINUTE: Field = Field {
    lo: 0,
    hi: 59,
    names: &[],
    end_names: &[],
    extras: none,
};
pub(super) const HOUR: Field = Field {
    lo: 0,
    hi: 23,
    names: &[],
    end_names: &[],
    extras: none,
};
pub(super) const DAY_OF_MONTH: Field = Field {
    lo: 1,
    hi: 31,
    names: &[],
    end_names: &[],
    extras: || vec!["L".to_owned(), format!("{}W", int_range(1, 31))],
};
pub(super) const MONTH: Field = Field {
    lo: 1,
    hi: 12,
    names: MONTHS,
    end_names: MONTHS,
    extras: none,
};
pub(super) const DAY_OF_WEEK: Field = Field {
    lo: 0,
    hi: 7,
    names: DAYS,
    end_names: DAYS_AT_END,
    extras: || {
        // `7L` parses but never fires (croner moves 7 to 0 for `#`, not for `L`).
        let last = format!("(?:{}|{})", int_range(0, 6), names(DAYS));
        let nth = format!("(?:{}|{})", int_range(0, 7), names(DAYS));
        vec![format!("{last}L"), format!("{nth}#[1-5]")]
    },
};

fn names(names: &[(&str, u32)]) -> String {
    names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join("|")
}

impl Field {
    /// `a-b` with `a <= b`, in numbers or in names.
    fn ranges(&self) -> String {
        let mut parts: Vec<String> = (self.lo..=self.hi)
            .map(|a| format!("{a}-{}", int_range(a, self.hi)))
            .collect();
        for (start, a) in self.names {
            let ends: Vec<&str> = self
                .end_names
                .iter()
                .filter(|(_, b)| b >= a)
                .map(|(n, _)| *n)
                .collect();
            parts.push(format!("{start}-(?:{})", ends.join("|")));
        }
        group(&parts)
    }

    /// One item of a list.
    fn item(&self) -> String {
        let mut value = vec![int_range(self.lo, self.hi)];
        if !self.names.is_empty() {
            value.push(names(self.names));
        }
        let value = group(&value);
        let step = format!("/{}", int_range(1, MAX_STEP));
        let mut parts = vec![
            format!("\\*{step}"),
            format!("(?:{}|{value})(?:{step})?", self.ranges()),
        ];
        parts.extend((self.extras)());
        group(&parts)
    }

    /// The whole field: `*` or a list of items.
    pub(super) fn regex(&self) -> String {
        let item = self.item();
        format!("(?:\\*|{item}(?:,{item})*)")
    }

    /// A list of items each of which only ever matches values in `set` (numbers, names,
    /// ranges, steps and `W`), for the calendars that never fire.
    pub(super) fn list_within(&self, set: &[u32]) -> String {
        let inside = |values: &[u32]| values.iter().all(|v| set.contains(v));
        let mut parts = Vec::new();
        for &a in set {
            parts.push(a.to_string());
            parts.extend(
                self.names
                    .iter()
                    .filter(|(_, v)| *v == a)
                    .map(|(n, _)| n.to_string()),
            );
            if self.lo == 1 && self.hi == 31 {
                parts.push(format!("{a}W"));
            }
        }
        // Spellings of a value at the start of a range, and at its end.
        let starts = |a: u32| {
            let named = self.names.iter().filter(move |(_, v)| *v == a);
            std::iter::once(a.to_string()).chain(named.map(|(n, _)| n.to_string()))
        };
        let ends = |b: u32| {
            let named = self.end_names.iter().filter(move |(_, v)| *v == b);
            std::iter::once(b.to_string()).chain(named.map(|(n, _)| n.to_string()))
        };
        for a in self.lo..=self.hi {
            for b in a..=self.hi {
                let mut spellings: Vec<String> = starts(a)
                    .flat_map(|x| ends(b).map(move |y| format!("{x}-{y}")))
                    .collect();
                let all: Vec<u32> = (a..=b).collect();
                if inside(&all) {
                    parts.extend(spellings.iter().cloned());
                }
                // Stepped: step s takes a, a+s, ... up to b; `a/s` runs up to the bound.
                if b == self.hi {
                    spellings.extend(starts(a));
                }
                let mut steps = Vec::new();
                for s in 1..=(b - a) {
                    let values: Vec<u32> = (a..=b).step_by(s as usize).collect();
                    if inside(&values) {
                        steps.push(s.to_string());
                    }
                }
                if inside(&[a]) {
                    // Any step past b - a takes a alone.
                    steps.push(int_range(b - a + 1, MAX_STEP));
                }
                if !steps.is_empty() {
                    for spelling in spellings {
                        parts.push(format!("{spelling}/(?:{})", steps.join("|")));
                    }
                }
            }
        }
        let item = group(&parts);
        format!("{item}(?:,{item})*")
    }
}

/// Months whose length is under 31 days, and February.
const SHORT_MONTHS: [u32; 5] = [2, 4, 6, 9, 11];

/// The cron expressions of a schedule (see the module's documentation).
pub fn regex() -> String {
    let fields = [MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK]
        .iter()
        .map(Field::regex)
        .collect::<Vec<_>>()
        .join(" ");
    // Only the day of the month picks days when the day of the week is `*`: the 30th or
    // 31st of February alone, or the 31st of short months alone, never come.
    let never = [
        (DAY_OF_MONTH.list_within(&[30, 31]), MONTH.list_within(&[2])),
        (
            DAY_OF_MONTH.list_within(&[31]),
            MONTH.list_within(&SHORT_MONTHS),
        ),
    ]
    .iter()
    .map(|(days, months)| format!("(?!\\S+ \\S+ (?:{days}) (?:{months}) \\*$)"))
    .collect::<String>();
    format!("^(?:@(?:yearly|annually|monthly|weekly|daily|midnight|hourly)|{never}{fields})$")
}

#[cfg(test)]
#[path = "cron_tests.rs"]
mod tests;
