//! A job's cron schedule: five fields (minute, hour, day of month, month, day of week) read
//! as crontab(5) reads them, in UTC or in the job's `schedule_timezone`, plus the
//! `@hourly`-style shorthands. Jobs store the text; the api's scheduler parses it to find
//! the minutes it names.
//!
//! In a zone with daylight saving time, a local minute that does not exist (the hour the
//! clocks skip) is not run, and one that happens twice (the hour they repeat) runs once, the
//! first time.

use chrono::{DateTime, Datelike, Duration, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A parsed schedule: the minutes, hours, days, months and weekdays it names, as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Whether the day-of-month or day-of-week field was `*`-based: crontab matches a day
    /// when *both* fields do if either is, and when *either* does if both are restricted
    /// (`0 0 1 * MON` runs on the 1st and on every Monday).
    days_any: bool,
    weekdays_any: bool,
    /// The zone the fields are read in; `None`: UTC.
    tz: Option<Tz>,
}

/// Parses an IANA time zone name (`Europe/Berlin`); the error says what is expected.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("{name:?} is not a time zone of the IANA database (such as Europe/Berlin or America/New_York)")
    })
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    /// Parses `expr`; the error says which field is wrong and why.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let expr = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            e if e.starts_with('@') => return Err(format!("unknown shorthand {e:?}")),
            e => e,
        };
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "must have 5 fields (minute hour day-of-month month day-of-week), got {}",
                fields.len()
            ));
        };
        let weekdays = field(weekday, "day of week", 0, 7, &WEEKDAYS, 0)?;
        Ok(Self {
            minutes: field(minute, "minute", 0, 59, &[], 0)?,
            hours: field(hour, "hour", 0, 23, &[], 0)? as u32,
            days: field(day, "day of month", 1, 31, &[], 0)? as u32,
            months: field(month, "month", 1, 12, &MONTHS, 1)? as u16,
            // 7 is Sunday too.
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            days_any: day.starts_with('*'),
            weekdays_any: weekday.starts_with('*'),
            tz: None,
        })
    }

    /// The same schedule, its fields read in `tz` rather than UTC.
    pub fn in_zone(self, tz: Tz) -> Self {
        Self {
            tz: Some(tz),
            ..self
        }
    }

    /// The local time of `t` the fields are read against.
    fn local(&self, t: DateTime<Utc>) -> NaiveDateTime {
        match self.tz {
            Some(tz) => t.with_timezone(&tz).naive_local(),
            None => t.naive_utc(),
        }
    }

    /// The first instant a local minute happens (`None` when the clocks skip it).
    fn instant(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz {
            Some(tz) => tz
                .from_local_datetime(&local)
                .earliest()
                .map(|t| t.with_timezone(&Utc)),
            None => Some(Utc.from_utc_datetime(&local)),
        }
    }

    /// Whether the schedule names the minute `t` falls in (the first time, when the local
    /// minute happens twice).
    pub fn matches(&self, t: DateTime<Utc>) -> bool {
        let Some(minute) = t.with_second(0).and_then(|t| t.with_nanosecond(0)) else {
            return false;
        };
        let local = self.local(minute);
        self.matches_local(local) && self.instant(local) == Some(minute)
    }

    fn matches_local(&self, t: NaiveDateTime) -> bool {
        let bit = |set: u64, n: u32| set & (1 << n) != 0;
        bit(self.minutes, t.minute())
            && bit(u64::from(self.hours), t.hour())
            && bit(u64::from(self.months), t.month())
            && self.day_matches(t)
    }

    /// Whether `t`'s date fits the day-of-month and day-of-week fields, by crontab's rule.
    fn day_matches(&self, t: NaiveDateTime) -> bool {
        let day = self.days & (1 << t.day()) != 0;
        let weekday = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        if self.days_any || self.weekdays_any {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The first minute the schedule names that starts after `after`, within ten years
    /// (`None` for a schedule that names no date in that time, such as `0 0 30 2 *`).
    /// Skips whole months, days and hours that cannot match, so even a leap-day schedule
    /// takes a few thousand steps.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let bit = |set: u64, n: u32| set & (1 << n) != 0;
        // Local time, where the fields are read: skipping ahead by whole months, days and
        // hours is exact there, and each candidate is turned into an instant at the end.
        let start = self.local(after);
        let mut t = start.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let end = start + Duration::days(3653);
        while t < end {
            let midnight = t.with_hour(0)?.with_minute(0)?;
            if !bit(u64::from(self.months), t.month()) {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = midnight.with_day(1)?.with_month(m)?.with_year(y)?;
            } else if !self.day_matches(t) {
                t = midnight + Duration::days(1);
            } else if !bit(u64::from(self.hours), t.hour()) {
                t = t.with_minute(0)? + Duration::hours(1);
            } else if !bit(self.minutes, t.minute()) {
                t += Duration::minutes(1);
            } else {
                match self.instant(t) {
                    Some(at) if at > after => return Some(at),
                    // Skipped by the clocks, or (the repeated hour) already past.
                    _ => t += Duration::minutes(1),
                }
            }
        }
        None
    }

    /// The latest minute the schedule names that starts after `after` and no later than
    /// `now`, looking back at most `window`: the slot a scheduler that woke at `now` still
    /// owes a build, if any.
    pub fn latest_slot(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Option<DateTime<Utc>> {
        let mut t = now.with_second(0)?.with_nanosecond(0)?;
        let oldest = after.max(now - window);
        while t > oldest {
            if self.matches(t) {
                return Some(t);
            }
            t -= Duration::minutes(1);
        }
        None
    }
}

/// Parses one field into a bit set over `min..=max`. `names` spell the values from
/// `first_named` on (months from 1, weekdays from 0).
fn field(
    text: &str,
    what: &str,
    min: u32,
    max: u32,
    names: &[&str],
    first_named: u32,
) -> Result<u64, String> {
    let bad = |why: String| format!("{what} field {text:?}: {why}");
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        let n = match names.iter().position(|n| *n == lower) {
            Some(i) => i as u32 + first_named,
            None => s
                .parse::<u32>()
                .map_err(|_| bad(format!("{s:?} is not a number")))?,
        };
        if !(min..=max).contains(&n) {
            return Err(bad(format!("{n} is outside {min}-{max}")));
        }
        Ok(n)
    };
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step = s
                    .parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad(format!("step {s:?} must be a positive number")))?;
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `5/15` runs from 5 to the end, as cron reads it.
                None if step > 1 => (value(r)?, max),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if lo > hi {
            return Err(bad(format!("range {lo}-{hi} runs backwards")));
        }
        for v in (lo..=hi).step_by(step as usize) {
            set |= 1 << v;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn fields_read_as_crontab_reads_them() {
        let s = Schedule::parse("*/15 9-17 * * MON-FRI").unwrap();
        // 2026-12-01 is a Tuesday.
        assert!(s.matches(at(2026, 12, 1, 9, 0)));
        assert!(s.matches(at(2026, 12, 1, 17, 45)));
        assert!(!s.matches(at(2026, 12, 1, 9, 5)));
        assert!(!s.matches(at(2026, 12, 1, 18, 0)));
        assert!(!s.matches(at(2026, 12, 6, 9, 0)), "a Sunday");

        let s = Schedule::parse("0 0 1 * mon").unwrap();
        assert!(s.matches(at(2026, 12, 1, 0, 0)), "the 1st, a Tuesday");
        assert!(s.matches(at(2026, 12, 7, 0, 0)), "a Monday");
        assert!(!s.matches(at(2026, 12, 2, 0, 0)));

        let s = Schedule::parse("30 2 * * 7").unwrap();
        assert!(s.matches(at(2026, 12, 6, 2, 30)), "7 is Sunday");
        let s = Schedule::parse("5/20,59 * * jan,Dec *").unwrap();
        for m in [5, 25, 45, 59] {
            assert!(s.matches(at(2026, 12, 1, 3, m)), "{m}");
        }
        assert!(!s.matches(at(2026, 11, 1, 3, 5)), "November");
        assert_eq!(
            Schedule::parse("@daily").unwrap(),
            Schedule::parse("0 0 * * *").unwrap()
        );
    }

    #[test]
    fn a_bad_schedule_says_what_is_wrong() {
        for (bad, says) in [
            ("* * * *", "5 fields"),
            ("60 * * * *", "minute field"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day of month field"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day of week field"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "not a number"),
            ("@often", "shorthand"),
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_latest_slot_is_the_newest_minute_after_the_start_within_the_window() {
        let s = Schedule::parse("0 * * * *").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 15, 20, 42).unwrap();
        let hour = Duration::hours(1);
        assert_eq!(
            s.latest_slot(at(2026, 12, 1, 0, 0), now, hour),
            Some(at(2026, 12, 1, 15, 0))
        );
        assert_eq!(
            s.latest_slot(at(2026, 12, 1, 15, 0), now, hour),
            None,
            "a slot at the start itself is not owed (the schedule was set then)"
        );
        assert_eq!(
            s.latest_slot(at(2026, 12, 1, 0, 0), now, Duration::minutes(10)),
            None,
            "older than the window"
        );
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(daily.latest_slot(at(2026, 1, 1, 0, 0), now, hour), None);
    }

    #[test]
    fn a_schedule_in_a_time_zone_follows_its_clocks_across_daylight_saving() {
        let berlin = parse_timezone("Europe/Berlin").unwrap();
        let s = Schedule::parse("0 3 * * *").unwrap().in_zone(berlin);
        // 03:00 in Berlin is 02:00 UTC in winter, 01:00 UTC in summer.
        assert!(s.matches(at(2026, 12, 1, 2, 0)));
        assert!(!s.matches(at(2026, 12, 1, 3, 0)));
        assert!(s.matches(at(2026, 7, 1, 1, 0)));
        assert_eq!(
            s.next_after(at(2026, 12, 1, 2, 30)),
            Some(at(2026, 12, 2, 2, 0))
        );
        // 2026-03-29: the clocks go from 02:00 to 03:00; 02:30 does not exist that day.
        let skipped = Schedule::parse("30 2 * * *").unwrap().in_zone(berlin);
        assert_eq!(
            skipped.next_after(at(2026, 3, 28, 12, 0)),
            Some(at(2026, 3, 30, 0, 30)),
            "the day without 02:30 gets no build"
        );
        // 2026-10-25: 02:00-03:00 happens twice (UTC 00:00-01:00, then 01:00-02:00).
        assert!(skipped.matches(at(2026, 10, 25, 0, 30)));
        assert!(
            !skipped.matches(at(2026, 10, 25, 1, 30)),
            "the repeat runs nothing"
        );
        assert_eq!(
            skipped.next_after(at(2026, 10, 25, 0, 30)),
            Some(at(2026, 10, 26, 1, 30))
        );
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("IANA"));
    }

    #[test]
    fn the_next_minute_named_is_found_however_far_it_is() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 15, 20, 42).unwrap();
        let next = |e: &str| Schedule::parse(e).unwrap().next_after(now);
        assert_eq!(next("* * * * *"), Some(at(2026, 12, 1, 15, 21)));
        assert_eq!(
            next("20 15 * * *"),
            Some(at(2026, 12, 2, 15, 20)),
            "not now itself"
        );
        assert_eq!(next("0 3 * * *"), Some(at(2026, 12, 2, 3, 0)));
        assert_eq!(next("0 0 1 1 *"), Some(at(2027, 1, 1, 0, 0)));
        assert_eq!(
            next("30 4 29 2 *"),
            Some(at(2028, 2, 29, 4, 30)),
            "leap day"
        );
        assert_eq!(next("0 9 * * MON"), Some(at(2026, 12, 7, 9, 0)));
        assert_eq!(next("0 0 30 2 *"), None, "no such date");
        let s = Schedule::parse("*/7 */5 1,15 * FRI").unwrap();
        let n = s.next_after(now).unwrap();
        assert!(s.matches(n) && n > now);
        let mut t = now;
        while t < n - Duration::minutes(1) {
            t += Duration::minutes(1);
            assert!(!s.matches(t), "{t} matches before {n}");
        }
    }
}
